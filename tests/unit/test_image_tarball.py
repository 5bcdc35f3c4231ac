"""One member of a tarball replaced, every other byte kept (anklume_image/tarball.py).

The archives are made by GNU tar, as mmdebstrap's are, with records of 1 KiB
(``-b2``): GNU tar's own ``--delete`` corrupts such an archive when it deletes
this member (found by a search over random archives; the image tier's build
failed the same way on a Debian 13 rootfs).
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from anklume_image.errors import BuildError
from anklume_image.tarball import replace_member

LONG = "usr/lib/" + "l" * 120  # a name that needs a pax record
SIZES = {"f0": 1, "f1": 10240, "f2": 0, "f3": 5000, "f4": 5000, "f5": 70000, "f6": 0,
         "f7": 10240, LONG: 512}


def gnu_tar_archive(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for name, size in SIZES.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode()[:1] * size)
        path.chmod(0o640)
    tarball = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "--format=pax", "-b2", "--sort=name", "--numeric-owner",
                    "--mtime=@1700000000", "-cf", tarball, "-C", tree, "."], check=True)
    return tarball


def members(tarball: Path) -> dict[str, tuple[int, float, bytes]]:
    with tarfile.open(tarball) as tar:
        result = {}
        for info in tar:
            data = tar.extractfile(info)
            result[info.name] = (info.mode, info.mtime, data.read() if data else b"")
    return result


def gnu_tar_lists(tarball: Path) -> list[str]:
    listed = subprocess.run(["tar", "-tf", tarball], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    # GNU tar lists directories with their slash, tarfile names them without
    return ["." if name == "./" else name.rstrip("/")
            for name in listed.stdout.split()]


@pytest.mark.parametrize("name", ["f1", LONG])
def test_the_member_is_replaced_and_every_other_one_kept(tmp_path: Path, name: str) -> None:
    tarball = gnu_tar_archive(tmp_path)
    before = members(tarball)
    new = tmp_path / "signed.efi"
    new.write_bytes(b"signed " * 3000)
    replace_member(tarball, name, new)
    after = members(tarball)
    assert gnu_tar_lists(tarball) == list(before)
    assert after[f"./{name}"] == (0o640, 1_700_000_000, new.read_bytes())
    assert {k: v for k, v in after.items() if k != f"./{name}"} == \
        {k: v for k, v in before.items() if k != f"./{name}"}
    assert not tarball.with_name("rootfs.tar.new").exists()


def test_a_missing_member_is_an_error_and_the_archive_is_untouched(tmp_path: Path) -> None:
    tarball = gnu_tar_archive(tmp_path)
    original = tarball.read_bytes()
    new = tmp_path / "signed.efi"
    new.write_bytes(b"x")
    with pytest.raises(BuildError, match="has no /usr/lib/none"):
        replace_member(tarball, "usr/lib/none", new)
    assert tarball.read_bytes() == original


def test_an_archive_damaged_after_a_member_is_refused(tmp_path: Path) -> None:
    """tarfile stops quietly at a header it cannot read; the copy must not."""
    tarball = gnu_tar_archive(tmp_path)
    with tarfile.open(tarball) as tar:
        f5 = tar.getmember("./f5")
    raw = bytearray(tarball.read_bytes())
    raw[f5.offset:f5.offset + 100] = b"garbage!" * 12 + b"junk"  # f5's header, name field
    tarball.write_bytes(bytes(raw))
    new = tmp_path / "signed.efi"
    new.write_bytes(b"x")
    with pytest.raises(BuildError, match="is damaged"):
        replace_member(tarball, "f1", new)
    assert tarball.read_bytes() == bytes(raw)
