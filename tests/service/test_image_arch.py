"""``anklume-image build --base arch`` with the real pacstrap, pacman and
keyring, against mirrors served from this machine (Arch's own mirror is not
reachable here): what an Arch mirror that is not one, and packages without
Arch's signatures, make of the build. Root: pacstrap mounts in the tree (in
the build's own namespaces). Measured on the shared 2 cores: 11 to 17 s the
first time (the keyring is populated once and cached under
/var/cache/anklume-image), 2.5 s after.

FAKE: the repositories are made here (a sync database and .PKGINFO-only
packages under the names the image asks for); nothing from Arch is in them,
which is the point: pacman must refuse them, and the build must say why.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from anklume_image import cli, packages
from anklume_image.config import Base, BuildConfig
from tests.unit.test_image_arch import serve

WANTED = packages.arch_packages(BuildConfig(out=Path("x"), base=Base.ARCH, zfs=False))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_repository(directory: Path, repository: str, names: list[str],
                    signature: bytes | None = None) -> None:
    """FAKE: a pacman sync database listing ``names``, each a package file
    holding only its .PKGINFO (and a ``signature`` file beside it if given)."""
    directory.mkdir(parents=True, exist_ok=True)
    database = io.BytesIO()
    with tarfile.open(fileobj=database, mode="w:gz") as db:
        for name in names:
            package = directory / f"{name}-1-1-any.pkg.tar.gz"
            with tarfile.open(package, "w:gz") as tar:
                _add(tar, ".PKGINFO", f"pkgname = {name}\npkgver = 1-1\narch = any\n".encode())
            data = package.read_bytes()
            if signature is not None:
                package.with_name(package.name + ".sig").write_bytes(signature)
            _add(db, f"{name}-1-1/desc", (
                f"%FILENAME%\n{package.name}\n\n%NAME%\n{name}\n\n%VERSION%\n1-1\n\n"
                f"%CSIZE%\n{len(data)}\n\n%SHA256SUM%\n{hashlib.sha256(data).hexdigest()}\n\n"
                "%ARCH%\nany\n\n").encode())
    (directory / f"{repository}.db").write_bytes(database.getvalue())


def build(tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]) -> str:
    out = tmp_path / "out" / "x.img"
    out.parent.mkdir()
    code = cli.main(["build", "--out", str(out), "--base", "arch", "--no-zfs",
                     "--mirror", server])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert not out.exists() and not out.with_name("x.img.sha256").exists()
    # pacstrap's and the hooks' mounts were in the build's namespace only
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    return err.splitlines()[-1]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with serve(tmp_path / "mirror") as server:
        yield server, tmp_path / "mirror"


def test_a_mirror_without_arch_packages_is_said(
        tmp_path: Path, served: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    server, root = served
    for repository in ("core", "extra"):
        fake_repository(root / repository / "os" / "x86_64", repository, [])
    line = build(tmp_path, server, capsys)
    assert f"hold none of the image's {len(WANTED)} packages: is it an Arch mirror?" in line


def test_packages_without_arch_signatures_are_refused(
        tmp_path: Path, served: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    server, root = served
    fake_repository(root / "core" / "os" / "x86_64", "core", WANTED, signature=b"forged")
    fake_repository(root / "extra" / "os" / "x86_64", "extra", [])
    line = build(tmp_path, server, capsys)
    assert f"pacman refused {len(WANTED)} package(s) without a valid signature" in line
    assert "does not serve Arch's signed packages" in line
    log = (tmp_path / "out" / "x.img.build" / "rootfs.log").read_text()
    assert "missing required signature" in log  # pacman's own words, behind the sentence
    listed = subprocess.run(["find", str(tmp_path / "out" / "x.img.build" / "arch-root"),
                             "-name", ".PKGINFO"], capture_output=True, text=True, check=True)
    assert listed.stdout == ""  # nothing of theirs was installed
