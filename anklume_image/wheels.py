"""What the image needs from PyPI because Debian does not package it: pinned wheels.

The image runs on Debian's own python3-* packages (packages.py). One piece is
missing from Debian 13: textual-serve, the guide's web mode (checked against
trixie, trixie-updates, trixie-security and trixie-backports; docs/desktop.md,
"The web mode on the image"). Everything it requires is in Debian 13 at
versions it accepts (python3-aiohttp, python3-aiohttp-jinja2, python3-jinja2,
python3-rich, python3-textual), so only its own wheel comes from PyPI:

- the exact file, by URL, its sha256 written here (the digest PyPI publishes);
  bytes that do not match stop the build before anything is unpacked;
- pure Python (``py3-none-any``, ``Root-Is-Purelib``, no ``.data``): nothing is
  compiled, nothing runs at install time; each file is checked against the
  wheel's own RECORD as it is unpacked;
- unpacked on the build host into a staging directory that is renamed into
  place only when whole, then copied into the image where Debian's Python
  keeps what dpkg does not install (/usr/local/lib/python3.X/dist-packages),
  and listed in /usr/share/anklume/wheels (name, version, sha256, URL).

A security update of textual-serve is a change of this file (version, URL,
digest) and a rebuild.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from anklume_image.config import Base, BuildConfig
from anklume_image.errors import BuildError

DOWNLOAD_TIMEOUT = 60.0
INSTALLER = "anklume-image"
LIST_IN_IMAGE = "/usr/share/anklume/wheels"


@dataclass(frozen=True)
class PinnedWheel:
    name: str
    version: str
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


# textual-serve: the version pyproject.toml's desktop extra starts from, the
# one the desktop tier runs. Its requirements and Debian 13's versions:
# aiohttp >= 3.9.5 (3.11.16), aiohttp-jinja2 >= 1.6 (1.6), jinja2 >= 3.1.4
# (3.1.6), rich (13.9.4), textual >= 0.66.0 (2.1.2).
TEXTUAL_SERVE = PinnedWheel(
    name="textual-serve", version="1.1.3",
    url="https://files.pythonhosted.org/packages/b5/fe/"
        "108e7773349d500cf363328c3d0b7123e03feda51e310a3a5b136ac8ca71/"
        "textual_serve-1.1.3-py3-none-any.whl",
    sha256="207a472bc6604e725b1adab4ab8bf12f4c4dc25b04eea31e4d04731d8bf30f18")
DESKTOP_WHEELS = (TEXTUAL_SERVE,)


def wanted(config: BuildConfig) -> tuple[PinnedWheel, ...]:
    """The guide's web mode, in Debian images with a desktop (Arch's
    repositories have never been looked at for it: docs/arch.md)."""
    if config.base is Base.ARCH or not config.sessions:
        return ()
    return DESKTOP_WHEELS


def staging_dir(config: BuildConfig) -> Path:
    """Where the build unpacks the wheels for the image's customize hook."""
    return config.work_dir / "wheels" / "site"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            data: bytes = response.read()
            return data
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise BuildError(f"could not download {url} ({reason}): the build needs PyPI's "
                         "files.pythonhosted.org for the pinned wheels") from None


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fetch(wheel: PinnedWheel, cache: Path, timeout: float = DOWNLOAD_TIMEOUT) -> bytes:
    """The wheel's bytes, equal to its pin: from the cache, else downloaded.

    A cached file that does not match (damaged, or an older pin's) is
    fetched again; downloaded bytes that do not match are kept nowhere."""
    cached = cache / wheel.filename
    with contextlib.suppress(FileNotFoundError):
        data = cached.read_bytes()
        if _sha256(data) == wheel.sha256:
            return data
        cached.unlink()
    data = _download(wheel.url, timeout)
    digest = _sha256(data)
    if digest != wheel.sha256:
        raise BuildError(f"{wheel.filename} downloaded from {wheel.url} has sha256 {digest}, "
                         f"not the {wheel.sha256} pinned in anklume_image/wheels.py: "
                         "nothing was installed and the build stops")
    cache.mkdir(parents=True, exist_ok=True)
    _write_atomically(cached, data)
    return data


def _record_digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
        b"=").decode()


def _refusal(wheel: PinnedWheel, why: str) -> BuildError:
    return BuildError(f"{wheel.filename} is not a pure-Python wheel this build installs "
                      f"({why}): nothing was installed")


def _member_path(wheel: PinnedWheel, name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise _refusal(wheel, f"the path {name!r} leaves the installation directory")
    if path.parts[0].endswith(".data"):
        raise _refusal(wheel, f"{name} would go outside site-packages (scripts, headers)")
    return path


def _checked_files(wheel: PinnedWheel, data: bytes) -> dict[PurePosixPath, bytes]:
    """The wheel's files, each equal to its RECORD line; refused otherwise."""
    dist_info = f"{wheel.name.replace('-', '_')}-{wheel.version}.dist-info"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        files = {_member_path(wheel, info.filename): archive.read(info)
                 for info in archive.infolist() if not info.is_dir()}
    meta = files.get(PurePosixPath(dist_info, "WHEEL"), b"").decode(errors="replace")
    if "Root-Is-Purelib: true" not in meta or "Tag: py3-none-any" not in meta:
        raise _refusal(wheel, f"{dist_info}/WHEEL does not say py3-none-any and purelib")
    record = PurePosixPath(dist_info, "RECORD")
    rows = list(csv.reader(files.get(record, b"").decode().splitlines()))
    hashes = {PurePosixPath(row[0]): row[1] for row in rows if row}
    for path, content in files.items():
        if path != record and hashes.get(path) != _record_digest(content):
            raise _refusal(wheel, f"{path} does not match the wheel's RECORD")
    return files


def unpack(wheel: PinnedWheel, data: bytes, site: Path) -> None:
    """Writes the wheel's files under ``site`` as an installer would (its
    RECORD extended with INSTALLER); nothing is written unless every file
    checked."""
    files = _checked_files(wheel, data)
    dist_info = PurePosixPath(f"{wheel.name.replace('-', '_')}-{wheel.version}.dist-info")
    installer = (INSTALLER + "\n").encode()
    files[dist_info / "INSTALLER"] = installer
    record = dist_info / "RECORD"
    files[record] = files[record].rstrip(b"\n") + (
        f"\n{dist_info}/INSTALLER,{_record_digest(installer)},{len(installer)}\n").encode()
    for path, content in files.items():
        target = site.joinpath(*path.parts)
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(0o644)


def listing(wheels: tuple[PinnedWheel, ...]) -> str:
    """/usr/share/anklume/wheels: what in the image came from PyPI, not from dpkg."""
    lines = ["# Installed from PyPI by anklume-image (anklume_image/wheels.py), not by dpkg:",
             "# name version sha256 url"]
    lines += [f"{w.name} {w.version} {w.sha256} {w.url}" for w in wheels]
    return "\n".join(lines) + "\n"


def stage(config: BuildConfig) -> None:
    """Fetches and verifies this image's wheels, then unpacks them into
    ``staging_dir``, which appears only once every wheel is in it."""
    site = staging_dir(config)
    pending = site.with_name(site.name + ".part")
    for stale in (site, pending):
        shutil.rmtree(stale, ignore_errors=True)
    fetched = [(wheel, fetch(wheel, config.cache_dir / "wheels")) for wheel in wanted(config)]
    if not fetched:
        return
    pending.mkdir(parents=True)
    try:
        for wheel, data in fetched:
            unpack(wheel, data, pending)
    except BaseException:
        shutil.rmtree(pending, ignore_errors=True)
        raise
    pending.replace(site)
