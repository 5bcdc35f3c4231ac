"""Read a GUID partition table without ever opening the disk for writing.

Why not libparted (pyparted): it opens every disk it reads O_RDWR. Closing a
block device opened for writing makes systemd-udevd's inotify watch
synthesize "change" events for the disk and its partitions (and try a
re-read of the partition table, which removes and re-adds them). anklumed
rescans the disks on every block event, so each rescan caused the next: 58
events in 10 s on an idle systemd guest, and a mount of ANKLUME-PERSIST that
fell in a re-read failed (CI, tests/vm/test_systemd.py). A GPT is a fixed
format (UEFI 2.10, section 5.3): reading it is a few preads on a read-only
descriptor, checked as the kernel checks it (block/partitions/efi.c).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

_BLKSSZGET = 0x1268  # the logical sector size of a block device (linux/fs.h)
_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # the first 92 bytes of a GPT header
_ENTRY = struct.Struct("<16s16sQQQ72s")  # the first 128 bytes of a partition entry
_SIGNATURE = b"EFI PART"
_PROTECTIVE_TYPE = 0xEE
# More than the 128 entries every tool writes, and a bound on what a garbled
# (yet CRC-valid) header can make us read.
_MAX_ENTRY_BYTES = 4 * 1024 * 1024


class GptPartition(NamedTuple):
    number: int  # the entry's index + 1: the kernel's partition number
    name: str
    size: int  # bytes


class _Header(NamedTuple):
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int


def read_gpt(disk: Path) -> tuple[int, list[GptPartition]] | None:
    """(disk size in bytes, the used partitions) of a GPT disk; None if it
    has no valid GPT or cannot be read (no medium, an I/O error)."""
    try:
        fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return _read(fd)
    except OSError:  # a card reader without a card, a failing stick
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> tuple[int, list[GptPartition]] | None:
    sector = _sector_size(fd)
    size = os.lseek(fd, 0, os.SEEK_END)
    last_lba = size // sector - 1
    if last_lba < 2 or not _has_protective_mbr(os.pread(fd, 512, 0)):
        return None
    # The primary header, or the backup at the disk's end when the primary
    # is damaged (as the kernel and every partitioning tool fall back).
    for lba in (1, last_lba):
        header = _header(os.pread(fd, sector, lba * sector), lba, last_lba)
        if header is None:
            continue
        entries = _entries(fd, header, sector)
        if entries is not None:
            return size, entries
    return None


def _sector_size(fd: int) -> int:
    if not stat.S_ISBLK(os.fstat(fd).st_mode):
        return 512  # an image file: written for 512-byte sectors
    with contextlib.suppress(OSError):
        got = struct.unpack("i", fcntl.ioctl(fd, _BLKSSZGET, b"\0" * 4))[0]
        if got >= 512:
            return int(got)
    return 512


def _has_protective_mbr(mbr: bytes) -> bool:
    """The kernel reads a GPT only behind an MBR with a type-0xEE entry
    starting at LBA 1 (a disk re-partitioned as MBR keeps a stale GPT)."""
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return False
    for i in range(4):
        entry = mbr[446 + 16 * i: 462 + 16 * i]
        if entry[4] == _PROTECTIVE_TYPE and struct.unpack_from("<I", entry, 8)[0] == 1:
            return True
    return False


def _header(block: bytes, lba: int, last_lba: int) -> _Header | None:
    if len(block) < _HEADER.size:
        return None
    (signature, _revision, header_size, crc, _reserved, my_lba, _alternate, _first_usable,
     _last_usable, _guid, entries_lba, count, entry_size, entries_crc) = _HEADER.unpack_from(block)
    if signature != _SIGNATURE or not _HEADER.size <= header_size <= len(block):
        return None
    zeroed = block[:16] + b"\0\0\0\0" + block[20:header_size]
    if zlib.crc32(zeroed) != crc or my_lba != lba:
        return None
    if entry_size < _ENTRY.size or entry_size % 8 or not 0 < entries_lba <= last_lba:
        return None
    if count * entry_size > _MAX_ENTRY_BYTES:
        return None
    return _Header(entries_lba, count, entry_size, entries_crc)


def _entries(fd: int, header: _Header, sector: int) -> list[GptPartition] | None:
    length = header.entry_count * header.entry_size
    table = os.pread(fd, length, header.entries_lba * sector)
    if len(table) != length or zlib.crc32(table) != header.entries_crc:
        return None
    found = []
    for index in range(header.entry_count):
        type_guid, _unique, first, last, _attributes, raw_name = _ENTRY.unpack_from(
            table, index * header.entry_size)
        if type_guid == bytes(16) or last < first:
            continue  # an unused entry
        name = raw_name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        found.append(GptPartition(index + 1, name, (last - first + 1) * sector))
    return found
