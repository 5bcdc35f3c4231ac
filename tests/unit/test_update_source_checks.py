"""The pure checks of an update source: the string, and whose rights open a path."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from anklumed.errors import InvalidArgument
from anklumed.slots.local_files import Reader, _may, check_local_path
from anklumed.slots.source import check_source, shown


@pytest.mark.parametrize(("source", "says"), [
    ("", "no update source given"),
    ("\t ", "no update source given"),
    ("/a\0b.manifest", "control character"),
    ("/a\nb.manifest", "control character"),
    ("/a\x7fb.manifest", "control character"),
    ("/" + "a" * 4096, "more than a path or URL can be (4096)"),
    ("http://[::1/x.manifest", "host is malformed"),
    ("http://h:65536/x.manifest", "port is not a number from 1 to 65535"),
    ("https://h:0/x.manifest", "port is 0"),
    ("http://?x.manifest", "has no host"),
    ("http://h/x.tar", "the URL of the bundle's .manifest"),
    ("gopher://h/x.manifest", "gopher:// sources are not supported"),
])
def test_a_source_that_cannot_name_a_bundle(source: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        check_source(source)


@pytest.mark.parametrize("source", [
    "/srv/a.manifest", "HTTPS://h.example/x/a.manifest", "http://u:p@h:8080/a.squashfs?t=1",
    "http://[::1]:8080/a.manifest",
])
def test_a_source_that_can(source: str) -> None:
    assert check_source(source) == source


def test_a_shown_url_loses_its_password_and_query() -> None:
    assert shown("http://u:pw@h:8080/a.manifest?token=t") == "http://h:8080/a.manifest"
    assert shown("http://u:pw@[bad/a.manifest") == "the URL"


@pytest.mark.parametrize(("path", "manifest"), [
    ("/b/x.manifest", "/b/x.manifest"), ("/b/x.squashfs", "/b/x.manifest"),
    ("/b/x", "/b/x.manifest"),
])
def test_the_manifest_of_a_path(path: str, manifest: str) -> None:
    assert check_local_path(Path(path)) == Path(manifest)


@pytest.mark.parametrize("path", ["/", "/b/..", "x.manifest", "."])
def test_a_path_that_names_no_manifest(path: str) -> None:
    with pytest.raises(InvalidArgument):
        check_local_path(Path(path))


def st(mode: int, uid: int, gid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(("mode", "uid", "gid", "reader", "may"), [
    (0o600, 0, 0, Reader(1000), False),          # root's own
    (0o644, 0, 0, Reader(1000), True),           # world-readable
    (0o640, 0, 50, Reader(1000, frozenset({50})), True),  # through a group
    (0o640, 0, 50, Reader(1000, frozenset({51})), False),
    (0o044, 1000, 0, Reader(1000), False),       # the owner's bits decide for the owner
    (0o604, 0, 50, Reader(1000, frozenset({50})), False),  # the group's for the group
    (0o000, 0, 0, Reader(0), True),              # root reads anything
    (0o000, 0, 0, None, True),                   # anklumed's own tools
])
def test_a_readers_rights(mode: int, uid: int, gid: int, reader: Reader | None,
                          may: bool, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)  # no ACL here: the mode bits decide
    try:
        assert _may(reader, fd, st(mode, uid, gid), 0o4) is may
    finally:
        os.close(fd)
