"""A local bundle passed as open files: the update closes them however it ends.

The daemon's own Updater (devtools/update_direct.py), with the files of
UpdateRequest.files as UpdateFromFiles hands them over: after a success, a
refusal and a cancel mid-write, none of the descriptors is open any more.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anklumed.errors import AnklumeError, Cancelled, InvalidArgument
from anklumed.jobs import Job
from anklumed.slots import bundle
from anklumed.slots.local_files import LocalFiles
from anklumed.slots.update import UpdateRequest
from devtools.update_direct import run_update
from tests.service.conftest import Sim
from tests.service.test_update import make_bundle
from tests.service.test_update_http import IMAGE_FILLER


def passed(manifest: Path) -> tuple[LocalFiles, list[tuple[int, int, int]]]:
    """The bundle opened as a client would; each fd with its (dev, inode)."""
    image = manifest.with_name(bundle.parse_manifest(manifest.read_bytes()).image)
    fds = [os.open(p, os.O_RDONLY) for p in (manifest, Path(f"{manifest}.sig"), image)]
    ids = [(fd, os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in fds]
    return LocalFiles(fds[0], fds[1], fds[2], name=str(manifest), owned=list(fds)), ids


def still_open(ids: list[tuple[int, int, int]]) -> list[int]:
    """Those fds that are still the files they were (a closed number may be reused)."""
    found = []
    for fd, dev, ino in ids:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (dev, ino):
            found.append(fd)
    return found


async def test_files_are_closed_after_a_success(sim: Sim, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path)
    sim.stop_daemon()
    files, ids = passed(manifest)
    message = await run_update(sim.workdir / "anklumed.toml",
                               UpdateRequest(str(manifest), files=files))
    assert "slot B holds 2.0.0" in message
    assert still_open(ids) == []


async def test_files_are_closed_after_a_refusal(sim: Sim, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path, compatible="anklume-live-arm64")
    sim.stop_daemon()
    files, ids = passed(manifest)
    with pytest.raises(InvalidArgument, match="this bundle is for"):
        await run_update(sim.workdir / "anklumed.toml", UpdateRequest(str(manifest), files=files))
    assert still_open(ids) == []


async def test_files_are_closed_after_a_cancel_mid_write(sim: Sim, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path, filler=IMAGE_FILLER)
    sim.stop_daemon()
    files, ids = passed(manifest)

    def cancel_at(job: Job, event: str) -> None:
        if event == "writing":
            job.cancel()

    with pytest.raises(Cancelled):
        await run_update(sim.workdir / "anklumed.toml",
                         UpdateRequest(str(manifest), files=files), cancel_at)
    assert still_open(ids) == []
    assert "STATUS=failed" in sim.persist_files()["slots/B.meta"]


async def test_a_path_is_opened_and_closed_by_the_update(sim: Sim, tmp_path: Path) -> None:
    """Without files, the Updater opens the path itself, and closes what it opened."""
    manifest = make_bundle(sim, tmp_path, compatible="anklume-live-arm64")
    sim.stop_daemon()
    with pytest.raises(AnklumeError):
        await run_update(sim.workdir / "anklumed.toml", UpdateRequest(str(manifest)))
    assert [fd for fd in os.listdir("/proc/self/fd")
            if target(fd).startswith(str(manifest.parent))] == []


def target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
