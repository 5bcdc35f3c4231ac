"""Stage ``stick``: the GPT image a person writes to a USB stick.

The partition table is written with sgdisk on a sparse file, then each
partition's image is copied to its offset, skipping zero blocks so the file
stays sparse (an empty slot B costs nothing on the build host). No loop
device: the build host's kernel never sees the partitions.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from anklume_image.config import BuildConfig, MiB
from anklume_image.errors import BuildError
from anklumed.command import run

SECTOR = 512
COPY_CHUNK = 4 * MiB
ESP_TYPE, LINUX_TYPE = "ef00", "8300"


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    mib: int
    typecode: str
    image: Path | None  # None: left empty (zeros)
    guid: str


def layout(config: BuildConfig, esp: Path, slot_a: Path, persist: Path,
           persist_guid: str) -> list[Partition]:
    """The contract's layout (DESIGN.md §1): EFI, OS-A, OS-B, PERSIST, in this order."""
    return [
        Partition(1, "ANKLUME-EFI", config.efi_mib, ESP_TYPE, esp, str(uuid.uuid4())),
        Partition(2, "ANKLUME-OS-A", config.slot_mib, LINUX_TYPE, slot_a, str(uuid.uuid4())),
        Partition(3, "ANKLUME-OS-B", config.slot_mib, LINUX_TYPE, None, str(uuid.uuid4())),
        Partition(4, "ANKLUME-PERSIST", config.persist_mib, LINUX_TYPE, persist, persist_guid),
    ]


def write_stick(parts: list[Partition], out: Path) -> None:
    total_mib = sum(p.mib for p in parts) + 2  # the GPT's two copies and alignment
    with out.open("wb") as f:
        f.truncate(total_mib * MiB)
    argv: list[str | Path] = ["sgdisk", "--clear"]
    for p in parts:
        argv += [f"--new={p.number}:0:+{p.mib}M", f"--typecode={p.number}:{p.typecode}",
                 f"--change-name={p.number}:{p.name}", f"--partition-guid={p.number}:{p.guid}"]
    run([*argv, out], timeout=60)
    starts = partition_starts(out)
    for p in parts:
        if p.image is not None:
            _copy_sparse(p, out, starts[p.number] * SECTOR)


def partition_starts(image: Path) -> dict[int, int]:
    """First sector of each partition, from sgdisk's own listing."""
    starts = {}
    listing = run(["sgdisk", "--print", image], timeout=60).stdout.decode()
    for line in listing.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].isdigit() and words[1].isdigit():
            starts[int(words[0])] = int(words[1])
    return starts


def partition_guid(image: Path, number: int) -> str:
    """A partition's unique GUID (its PARTUUID, lower case), from sgdisk."""
    info = run(["sgdisk", "-i", str(number), image], timeout=60).stdout.decode()
    return info.split("Partition unique GUID: ")[1].split()[0].lower()


def _copy_sparse(part: Partition, out: Path, offset: int) -> None:
    assert part.image is not None
    size = part.image.stat().st_size
    if size > part.mib * MiB:
        raise BuildError(f"{part.image.name} ({size // MiB} MiB) does not fit "
                         f"{part.name} ({part.mib} MiB)")
    with part.image.open("rb") as src, out.open("r+b") as dst:
        position = 0
        while chunk := src.read(COPY_CHUNK):
            if chunk.count(0) != len(chunk):
                os.pwrite(dst.fileno(), chunk, offset + position)
            position += len(chunk)
        os.fsync(dst.fileno())
