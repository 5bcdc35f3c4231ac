"""anklumed.gpt: a GUID partition table read as the kernel reads it, through
a descriptor that is never opened for writing (udevd turns the close of a
write-opened disk into change events, and anklumed rescans on each)."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

from anklumed.gpt import GptPartition, read_gpt
from devtools.stickimg import write_gpt

MiB = 1024 * 1024
IN_CLOSE_WRITE = 0x08
IN_CLOSE_NOWRITE = 0x10
STICK = [GptPartition(1, "ANKLUME-EFI", 8 * MiB), GptPartition(2, "ANKLUME-OS-A", 16 * MiB),
         GptPartition(3, "ANKLUME-OS-B", 16 * MiB), GptPartition(4, "ANKLUME-PERSIST", 4 * MiB)]


def stick_image(tmp_path: Path) -> Path:
    image = tmp_path / "stick.img"
    write_gpt(image, slot_mib=16, persist_mib=4)
    return image


def closes_seen(path: Path, action: object) -> set[int]:
    """The inotify close events ``action()`` causes on ``path``: udevd's own
    watch on block devices is IN_CLOSE_WRITE."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0
    try:
        assert libc.inotify_add_watch(fd, os.fsencode(path), IN_CLOSE_WRITE | IN_CLOSE_NOWRITE) >= 0
        action()  # type: ignore[operator]
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return set()
    finally:
        os.close(fd)
    masks, offset = set(), 0
    while offset < len(data):
        _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
        masks.add(mask)
        offset += 16 + length
    return masks


def test_the_sticks_partitions_are_read_by_number_name_and_size(tmp_path: Path) -> None:
    image = stick_image(tmp_path)
    assert read_gpt(image) == (image.stat().st_size, STICK)


def test_the_disk_is_never_opened_for_writing(tmp_path: Path) -> None:
    image = stick_image(tmp_path)
    seen = closes_seen(image, lambda: read_gpt(image))
    assert seen == {IN_CLOSE_NOWRITE}, seen


def damage(image: Path, offset: int) -> None:
    with image.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_damaged_primary_header_falls_back_to_the_backup(tmp_path: Path) -> None:
    image = stick_image(tmp_path)
    damage(image, 512 + 60)  # in the disk GUID: the header's CRC no longer matches
    assert read_gpt(image) == (image.stat().st_size, STICK)


def test_damaged_primary_entries_fall_back_to_the_backup(tmp_path: Path) -> None:
    image = stick_image(tmp_path)
    damage(image, 1024 + 56)  # the first entry's name: the entries' CRC no longer matches
    assert read_gpt(image) == (image.stat().st_size, STICK)


def test_both_headers_damaged_is_no_table(tmp_path: Path) -> None:
    image = stick_image(tmp_path)
    damage(image, 512 + 60)
    damage(image, image.stat().st_size - 512 + 60)
    assert read_gpt(image) is None


def test_a_gpt_without_its_protective_mbr_is_not_read(tmp_path: Path) -> None:
    """The disk was re-partitioned as MBR and kept a stale GPT: the kernel
    ignores that GPT, and so must anklumed."""
    image = stick_image(tmp_path)
    with image.open("r+b") as f:
        f.seek(446 + 4)
        f.write(b"\x83")  # the protective entry becomes a Linux partition
    assert read_gpt(image) is None


def test_what_is_not_a_gpt_disk_is_none(tmp_path: Path) -> None:
    empty = tmp_path / "zeros.img"
    empty.write_bytes(bytes(4 * MiB))
    tiny = tmp_path / "tiny.img"
    tiny.write_bytes(b"\x55\xaa")
    for path in (empty, tiny, tmp_path / "absent.img", tmp_path):
        assert read_gpt(path) is None, path
