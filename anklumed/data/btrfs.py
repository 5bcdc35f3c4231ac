"""BTRFS on the opened data disk: zstd compression and one subvolume per use."""

from __future__ import annotations

from pathlib import Path

from anklumed.command import run
from anklumed.hostns import for_system

MOUNT_OPTIONS = "compress=zstd,noatime"


def make_filesystem(device: Path, label: str) -> None:
    run(["mkfs.btrfs", "-q", "-f", "-L", label, device], timeout=300)


def mount(device: Path, target: Path, subvolume: str | None = None) -> None:
    options = MOUNT_OPTIONS + (f",subvol={subvolume}" if subvolume else "")
    target.mkdir(parents=True, exist_ok=True)
    run(for_system(["mount", "-t", "btrfs", "-o", options, device, target]), timeout=120)


def unmount(target: Path) -> None:
    run(for_system(["umount", target]), timeout=120)


def create_subvolume(top: Path, name: str) -> Path:
    path = top / name
    if not path.exists():
        run(["btrfs", "subvolume", "create", path])
    return path


def subvolumes(top: Path) -> list[str]:
    out = run(["btrfs", "subvolume", "list", "-o", top]).stdout.decode()
    return [line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line]
