"""dm-verity devices for the OS slots, through cryptsetup's veritysetup.

The hash tree of each slot lives in PERSIST (``slots/X.verity``, DESIGN.md §2).
PERSIST is mounted only per transaction, so callers copy the tree somewhere
that stays (under /run) before opening a device that keeps it open.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from anklumed.command import CommandError, run
from anklumed.errors import VerificationFailed

MAPPER = Path("/dev/mapper")


def open_device(data: Path, tree: Path, root_hash: str, name: str) -> Path:
    """Map ``data`` read-only through dm-verity; return /dev/mapper/<name>.

    dm-verity checks lazily, block by block as they are read. Reading the
    first block here walks its path up to the root, so a tree that does not
    belong to ``root_hash`` (or a corrupt first block) is refused at once
    rather than at the first read of whoever mounts the device.
    """
    try:
        run(["veritysetup", "open", data, name, tree, root_hash], timeout=120)
    except CommandError as e:
        raise VerificationFailed(f"{data} does not match root hash {root_hash}: {e}") from None
    device = MAPPER / name
    try:
        _read_first_block(device)
    except OSError as e:
        close_device(name)
        raise VerificationFailed(
            f"{data} does not match root hash {root_hash}: {e.strerror}") from None
    return device


def _read_first_block(device: Path) -> None:
    # O_DIRECT: the page cache must not answer for the device.
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    try:
        buffer = mmap.mmap(-1, 4096)  # O_DIRECT needs an aligned buffer
        os.readv(fd, [buffer])
    finally:
        os.close(fd)


def close_device(name: str) -> None:
    run(["veritysetup", "close", name], timeout=60)


def verify(data: Path, tree: Path, root_hash: str) -> None:
    """Read every block of ``data`` against the tree; raise VerificationFailed."""
    try:
        run(["veritysetup", "verify", data, tree, root_hash], timeout=3600)
    except CommandError as e:
        raise VerificationFailed(f"{data} does not match root hash {root_hash}: {e}") from None
