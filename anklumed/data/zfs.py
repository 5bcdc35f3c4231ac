"""ZFS on the opened data disk: one pool, zstd compression, one dataset per use.

Commands that mount (create, import, export) run for the system's mount
namespace (anklumed/hostns.py)."""

from __future__ import annotations

from pathlib import Path

from anklumed.command import run
from anklumed.hostns import for_system

# 4 KiB sectors: right for SSDs and USB disks that claim 512-byte sectors.
ASHIFT = 12


def create_pool(name: str, device: Path, mountpoint: Path) -> None:
    run(for_system(["zpool", "create", "-f", "-o", f"ashift={ASHIFT}", "-o", "autotrim=on",
         "-O", "compression=zstd", "-O", "atime=off", "-O", "xattr=sa",
         "-O", "acltype=posixacl", "-O", f"mountpoint={mountpoint}", name, device]),
        timeout=300)


def create_dataset(pool: str, name: str, mountpoint: Path | str | None = None) -> None:
    argv = ["zfs", "create", "-p"]
    if mountpoint is not None:
        argv += ["-o", f"mountpoint={mountpoint}"]
    run(for_system([*argv, f"{pool}/{name}"]))


def import_pool(name: str, search_dir: Path) -> None:
    """Import ``name`` looking only at ``search_dir`` (/dev/mapper: the opened disk)."""
    run(for_system(["zpool", "import", "-d", search_dir, name]), timeout=300)


def export_pool(name: str) -> None:
    run(for_system(["zpool", "export", name]), timeout=300)


def clear_errors(name: str) -> None:
    """`zpool clear`: a pool suspended by a lost disk resumes once the disk is back."""
    run(["zpool", "clear", name], timeout=120)


def pool_property(name: str, prop: str) -> str:
    return run(["zpool", "get", "-H", "-o", "value", prop, name]).stdout.decode().strip()


def dataset_property(dataset: str, prop: str) -> str:
    return run(["zfs", "get", "-H", "-o", "value", prop, dataset]).stdout.decode().strip()


def datasets(pool: str) -> list[str]:
    """The pool's datasets, by name below the pool ("incus-state", ...)."""
    out = run(["zfs", "list", "-H", "-o", "name", "-r", pool]).stdout.decode()
    return [name.split("/", 1)[1] for name in out.splitlines() if "/" in name]
