"""Which filesystems the data disk can be made with on this system, now.

ZFS needs its tools and its kernel module loaded. Loaded, not loadable: the
image loads it at boot (zfs-load-module.service) and anklumed could not load
it later (anklumed.service keeps no CAP_SYS_MODULE), and under Secure Boot
the kernel refuses a module the build did not sign (an image built without
--secure-boot-key), which a dry run (``modprobe -n``) would still find on
disk (docs/boot-chain.md, "The ZFS module is signed with the Secure Boot
key").
Only files are looked at: no program is run, so asking again costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anklumed.data.poolconf import Backend

TOOL_DIRS = (Path("/usr/sbin"), Path("/usr/bin"), Path("/sbin"), Path("/bin"))
SYS_MODULE = Path("/sys/module")
# What each filesystem needs: its programs, and the kernel module that must
# already be loaded (the kernel loads BTRFS's itself at the first mount, and
# Debian signs it).
NEEDS: dict[Backend, tuple[tuple[str, ...], str | None]] = {
    Backend.ZFS: (("zpool", "zfs"), "zfs"),
    Backend.BTRFS: (("mkfs.btrfs", "btrfs"), None),
}
# ZFS first where it works; BTRFS the default only where it does not (Arch,
# --no-zfs, Secure Boot).
PREFERENCE = (Backend.ZFS, Backend.BTRFS)


def have(tool: str, tool_dirs: Sequence[Path] = TOOL_DIRS) -> bool:
    return any((d / tool).exists() for d in tool_dirs)


def why_missing(backend: Backend, tool_dirs: Sequence[Path] = TOOL_DIRS,
                modules: Path = SYS_MODULE) -> str:
    """Why the data disk cannot be made with ``backend`` now; "" when it can."""
    tools, module = NEEDS[backend]
    lacking = [tool for tool in tools if not have(tool, tool_dirs)]
    if lacking:
        return (f"{backend.value.upper()} is not installed on this system ({lacking[0]} is "
                "missing; the image was built without it)")
    if module is not None and not (modules / module).is_dir():
        return (f"the {module} kernel module is not loaded (under Secure Boot the kernel "
                "refuses an unsigned one)")
    return ""


def available(tool_dirs: Sequence[Path] = TOOL_DIRS,
              modules: Path = SYS_MODULE) -> tuple[Backend, ...]:
    """The filesystems the data disk can be made with, the preferred first."""
    return tuple(b for b in PREFERENCE if not why_missing(b, tool_dirs, modules))
