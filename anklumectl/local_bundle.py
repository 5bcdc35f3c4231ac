"""A local update bundle, opened here and passed to anklumed as open files.

anklumed never opens a path for its caller: what it reads is what the user
running anklumectl could open (anklumed also runs with its own /tmp and no
/home). The manifest, its signature and the image it names are opened
read-only; anything but a regular file is refused here, never opened (a
FIFO would hang, a device could act), and anklumed checks again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from anklumectl.client import ClientError

ERROR_PREFIX = "org.anklume.Live1.Error."
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


@dataclass
class OpenBundle:
    name: str  # the manifest's absolute path, for messages and the slot's Source
    manifest: int
    signature: int | None = None
    image: int | None = None
    fds: list[int] = field(default_factory=list)


def _error(name: str, message: str) -> ClientError:
    return ClientError(ERROR_PREFIX + name, message)


def manifest_path(source: str) -> Path:
    if not source.strip():
        raise _error("InvalidArgument", "no update source given: give the path or the "
                     "http(s) URL of a bundle's .manifest")
    path = Path(source).absolute()
    if path.name in ("", ".", ".."):
        raise _error("InvalidArgument", f"{source} names a directory: give the path of a "
                     "bundle's .manifest")
    return path if path.suffix == ".manifest" else path.with_suffix(".manifest")


def _open(path: Path, what: str, missing_ok: bool = False) -> int | None:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
            raise _error("InvalidArgument", f"the {what} {path} is {kind}, not a regular "
                         "file: give the bundle's own files")
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT and missing_ok:
            return None
        if e.errno == errno.ENOENT:
            raise _error("NotFound", f"no {what} at {path}: check the path") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise _error("NotAuthorized", f"you cannot read the {what} {path}: give a "
                         "bundle you can read") from None
        raise _error("InvalidArgument", f"the {what} {path} cannot be opened "
                     f"({e.strerror}): check the path") from None


def image_name(manifest_fd: int) -> str | None:
    """The IMAGE the manifest names, if it names a plain one (anklumed judges the rest)."""
    # Here, not at the top: the bundle module brings pydantic and cryptography,
    # which every other anklumectl command would load for nothing.
    from anklumed.slots.bundle import MAX_MANIFEST

    data = os.pread(manifest_fd, MAX_MANIFEST + 1, 0)
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().upper() == "IMAGE":
            value = value.strip().strip("'\"")
            if value and "/" not in value and value not in (".", ".."):
                return value
    return None


@contextlib.contextmanager
def open_bundle(source: str) -> Iterator[OpenBundle]:
    """The bundle's files, open until the block ends (once sent, anklumed holds its own)."""
    path = manifest_path(source)
    opened: list[int] = []
    try:
        manifest = _open(path, "manifest")
        assert manifest is not None
        opened.append(manifest)
        bundle = OpenBundle(str(path), manifest, fds=opened)
        bundle.signature = _open(path.with_name(path.name + ".sig"), "signature",
                                 missing_ok=True)
        if bundle.signature is not None:
            opened.append(bundle.signature)
        name = image_name(manifest)
        if name is not None:
            bundle.image = _open(path.with_name(name), "image")
            assert bundle.image is not None
            opened.append(bundle.image)
        yield bundle
    finally:
        for fd in opened:
            os.close(fd)
