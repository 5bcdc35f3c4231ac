"""Facts about the running machine: what backs ``/``, boot time, memory encryption.

Everything here reads the kernel's own interfaces (mountinfo, sysfs, cpuinfo)
and answers "unknown" (None) rather than guess.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

RAM_FSTYPES = frozenset({"tmpfs", "ramfs", "rootfs"})
RAM_BLOCK_PREFIXES = ("ram", "zram", "pmem")


class Mount(BaseModel):
    model_config = ConfigDict(frozen=True)

    mountpoint: str
    devno: str  # "major:minor"
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return (
        field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        a, b = left.split(), right.split()
        if not sep or len(a) < 5 or len(b) < 3:
            continue
        mounts.append(
            Mount(mountpoint=_unescape(a[4]), devno=a[2], fstype=b[0], source=_unescape(b[1]),
                  options=b[2])
        )
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds ``path`` (the last, longest matching mountpoint)."""
    best: Mount | None = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        if (path == mp or path.startswith(mp + "/") or mp == "/") and (
            best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/")
        ):
            best = m
    return best


class Backing(BaseModel):
    """What a mount really sits on."""

    model_config = ConfigDict(frozen=True)

    in_ram: bool | None  # None: could not tell
    disks: tuple[str, ...] = ()  # whole disks (e.g. "sdb") it reads from


def _overlay_lower(options: str) -> list[str]:
    for opt in options.split(","):
        if opt.startswith("lowerdir="):
            return [p for p in opt[len("lowerdir=") :].split(":") if p]
    return []


def backing_of(
    path: str, mounts: list[Mount], sysfs: Path = Path("/sys"), depth: int = 0
) -> Backing:
    """Follow overlay lower dirs, loop backing files and device-mapper slaves
    down to RAM or to whole disks."""
    mount = mount_of(path, mounts)
    if mount is None or depth > 8:
        return Backing(in_ram=None)
    if mount.fstype in RAM_FSTYPES:
        return Backing(in_ram=True)
    if mount.fstype == "overlay":
        # The upper dir is always a tmpfs on a live system; what matters is the lower.
        lowers = _overlay_lower(mount.options)
        return _combine(backing_of(p, mounts, sysfs, depth + 1) for p in lowers)
    return _block_backing(mount.devno, mounts, sysfs, depth)


def _block_backing(devno: str, mounts: list[Mount], sysfs: Path, depth: int) -> Backing:
    node = sysfs / "dev" / "block" / devno
    try:
        device = node.resolve(strict=True)
    except OSError:
        return Backing(in_ram=None)
    name = device.name
    if name.startswith(RAM_BLOCK_PREFIXES):
        return Backing(in_ram=True)
    backing_file = device / "loop" / "backing_file"
    if backing_file.exists():
        target = backing_file.read_text().strip()
        return backing_of(target, mounts, sysfs, depth + 1)
    slaves = sorted((device / "slaves").glob("*")) if (device / "slaves").is_dir() else []
    if slaves:
        return _combine(
            _block_backing(_devno(s), mounts, sysfs, depth + 1) for s in slaves
        )
    disk = device.parent.name if (device / "partition").exists() else name
    return Backing(in_ram=False, disks=(disk,))


def _devno(sys_dir: Path) -> str:
    try:
        return (sys_dir / "dev").read_text().strip()
    except OSError:
        return "0:0"


def _combine(parts: object) -> Backing:
    items = list(parts)  # type: ignore[call-overload]
    if not items:
        return Backing(in_ram=None)
    disks = tuple(sorted({d for b in items for d in b.disks}))
    if any(b.in_ram is False for b in items):
        return Backing(in_ram=False, disks=disks)
    if all(b.in_ram is True for b in items):
        return Backing(in_ram=True)
    return Backing(in_ram=None, disks=disks)


def root_backing() -> Backing:
    try:
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return Backing(in_ram=None)
    return backing_of("/", mounts)


def boot_time(proc_stat: Path = Path("/proc/stat")) -> float | None:
    """When the kernel booted, as a Unix time (``btime``)."""
    try:
        for line in proc_stat.read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class MemoryEncryption(StrEnum):
    ACTIVE = "active"
    AVAILABLE = "available"
    UNSUPPORTED = "unsupported"
    UNKNOWN = "unknown"


def memory_encryption(
    cpuinfo: str | None, cmdline: str, kernel_config: str | None
) -> MemoryEncryption:
    """AMD SME / Intel TME state from what the kernel exposes (seed: Layer 3).

    cpuinfo shows ``sme`` only when the firmware enabled it; whether the kernel
    then turned it on depends on ``mem_encrypt=`` or the kernel's default.
    TME is switched on by the firmware alone, which cpuinfo does not report.
    """
    if cpuinfo is None:
        return MemoryEncryption.UNKNOWN
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    if "sme" in flags:
        words = cmdline.split()
        if "mem_encrypt=on" in words:
            return MemoryEncryption.ACTIVE
        if "mem_encrypt=off" in words:
            return MemoryEncryption.AVAILABLE
        if kernel_config is None:
            return MemoryEncryption.UNKNOWN
        if "CONFIG_AMD_MEM_ENCRYPT_ACTIVE_BY_DEFAULT=y" in kernel_config.splitlines():
            return MemoryEncryption.ACTIVE
        return MemoryEncryption.AVAILABLE
    if "tme" in flags:
        return MemoryEncryption.UNKNOWN
    return MemoryEncryption.UNSUPPORTED


def read_memory_encryption() -> MemoryEncryption:
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return None

    release = os.uname().release
    return memory_encryption(
        read("/proc/cpuinfo"), read("/proc/cmdline") or "", read(f"/boot/config-{release}")
    )

