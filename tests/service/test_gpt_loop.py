"""anklumed.gpt on a real block device: a loop device with 4096-byte logical
sectors (as some USB-SATA bridges present a disk), read as the kernel reads
it, and never opened for writing (udevd watches block devices for exactly
that close and answers with change events anklumed would rescan on)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from anklumed.gpt import GptPartition, read_gpt
from devtools import stickimg
from tests.unit.test_gpt import IN_CLOSE_NOWRITE, closes_seen

MiB = 1024 * 1024


def test_a_4k_sector_disk_is_read_and_never_opened_for_writing(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    with image.open("r+b") as f:
        f.truncate(32 * MiB)
    loop = stickimg.find_loop(image, ("--sector-size", "4096"))
    try:
        stickimg.sh("sgdisk", "--new=1:0:+8M", "--change-name=1:ANKLUME-PERSIST", loop)
        seen = closes_seen(loop, lambda: read_gpt(loop))
        assert seen == {IN_CLOSE_NOWRITE}, seen
        assert read_gpt(loop) == (32 * MiB, [GptPartition(1, "ANKLUME-PERSIST", 8 * MiB)])
    finally:
        subprocess.run(["losetup", "-d", str(loop)], check=False)
