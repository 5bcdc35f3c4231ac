"""One member of the rootfs tarball replaced, every other byte kept.

The Secure Boot stage signs the UKI after mmdebstrap made the tarball, and
the signed file must take the unsigned one's place (secure_boot.py). GNU
tar's ``--delete`` was the first way, and it corrupted mmdebstrap's
archives: the headers of the members near the end were overwritten by data
(seen on a Debian 13 sway rootfs: ``tar -t`` then says "Skipping to next
header" after ./var/lock). So the archive is rewritten here by offsets:
the bytes before the old member and after it are copied as they are, and
the new member is written between them with the old one's header fields.
The result is checked by reading it back before it replaces the original,
and the replacement is a rename: an interrupted build leaves the original.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO

from anklume_image.errors import BuildError

_BLOCK = tarfile.BLOCKSIZE
_COPY_CHUNK = 1 << 20


def replace_member(tarball: Path, member_path: str, new: Path) -> None:
    """Put ``new`` in ``tarball`` in place of ``member_path`` (with or
    without a leading ``./``), keeping its owner, mode, time and pax
    records (xattrs)."""
    old, count = _find(tarball, member_path)
    header = _header_like(old, new.stat().st_size)
    pending = tarball.with_name(tarball.name + ".new")
    with tarball.open("rb") as src, pending.open("wb") as dst, new.open("rb") as data:
        _copy(src, dst, old.offset)
        dst.write(header)
        shutil.copyfileobj(data, dst, _COPY_CHUNK)
        dst.write(bytes(_padded(new.stat().st_size) - new.stat().st_size))
        src.seek(old.offset_data + _padded(old.size))
        shutil.copyfileobj(src, dst, _COPY_CHUNK)
        dst.flush()
        os.fsync(dst.fileno())
    _check(pending, old.name, new.stat().st_size, count)
    pending.replace(tarball)


def _find(tarball: Path, member_path: str) -> tuple[tarfile.TarInfo, int]:
    """The member and how many members the archive has, read to its end:
    an archive tarfile cannot read whole is refused, not half-copied."""
    wanted = {member_path, "./" + member_path}
    found = None
    count = 0
    with tarfile.open(tarball) as tar:
        for member in tar:
            count += 1
            if member.name in wanted:
                found = member
        end = tar.offset
    if found is None:
        raise BuildError(f"the rootfs has no /{member_path} to replace")
    if not _only_zeros_after(tarball, end):
        raise BuildError(f"{tarball} is damaged: it goes on after the last member "
                         "tarfile can read")
    return found, count


def _header_like(old: tarfile.TarInfo, size: int) -> bytes:
    info = tarfile.TarInfo(old.name)
    info.type, info.mode, info.mtime = old.type, old.mode, old.mtime
    info.uid, info.gid, info.uname, info.gname = old.uid, old.gid, old.uname, old.gname
    # The old pax records (xattrs, long names) stay; its size is the new one's.
    info.pax_headers = {k: v for k, v in old.pax_headers.items() if k != "size"}
    info.size = size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _check(tarball: Path, name: str, size: int, count: int) -> None:
    with tarfile.open(tarball) as tar:
        members = list(tar)
        end = tar.offset
    sizes = [m.size for m in members if m.name == name]
    if len(members) != count or sizes != [size] or not _only_zeros_after(tarball, end):
        tarball.unlink()
        raise BuildError(f"replacing /{name.removeprefix('./')} in the rootfs tarball "
                         "did not give back a whole archive")


def _copy(src: BinaryIO, dst: BinaryIO, length: int) -> None:
    remaining = length
    while remaining:
        chunk = src.read(min(_COPY_CHUNK, remaining))
        if not chunk:
            raise BuildError("the rootfs tarball ended early")
        dst.write(chunk)
        remaining -= len(chunk)


def _only_zeros_after(tarball: Path, offset: int) -> bool:
    """tarfile stops quietly at a header it cannot read: what follows the
    last member it read must be the end-of-archive zeros and nothing else."""
    with tarball.open("rb") as f:
        f.seek(offset)
        while chunk := f.read(_COPY_CHUNK):
            if chunk.count(0) != len(chunk):
                return False
    return tarball.stat().st_size - offset >= 2 * _BLOCK


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK
