"""Which filesystems the data disk can be made with: ZFS first where its
tools are installed and its module is loaded, BTRFS where its tools are.
FAKE systems: a directory of empty programs and one of /sys/module."""

from __future__ import annotations

from pathlib import Path

import pytest

from anklumed.data import filesystems
from anklumed.data.poolconf import Backend

ZFS_TOOLS, BTRFS_TOOLS = ("zpool", "zfs"), ("mkfs.btrfs", "btrfs")


class System:
    """A FAKE system: ``tools`` installed, ``modules`` loaded (directories under /sys/module)."""

    def __init__(self, root: Path, tools: tuple[str, ...], modules: tuple[str, ...]) -> None:
        self.tool_dirs = (root / "bin", root / "sbin")
        self.modules = root / "sys-module"
        for directory in (*self.tool_dirs, self.modules):
            directory.mkdir(parents=True)
        for tool in tools:
            (self.tool_dirs[1] / tool).touch()
        for module in modules:
            (self.modules / module).mkdir()

    def available(self) -> tuple[Backend, ...]:
        return filesystems.available(self.tool_dirs, self.modules)

    def why_missing(self, backend: Backend) -> str:
        return filesystems.why_missing(backend, self.tool_dirs, self.modules)


@pytest.mark.parametrize(("tools", "modules", "offered"), [
    (ZFS_TOOLS + BTRFS_TOOLS, ("zfs",), (Backend.ZFS, Backend.BTRFS)),
    # --zfs image under Secure Boot: the kernel refused the unsigned module
    (ZFS_TOOLS + BTRFS_TOOLS, (), (Backend.BTRFS,)),
    # --no-zfs, or the Arch base: no zpool
    (BTRFS_TOOLS, ("zfs",), (Backend.BTRFS,)),
    (ZFS_TOOLS, ("zfs",), (Backend.ZFS,)),
    (("zpool",), ("zfs",), ()),  # zpool without zfs cannot make the datasets
    ((), (), ()),
])
def test_zfs_is_offered_first_when_its_tools_are_there_and_its_module_loaded(
        tmp_path: Path, tools: tuple[str, ...], modules: tuple[str, ...],
        offered: tuple[Backend, ...]) -> None:
    assert System(tmp_path, tools, modules).available() == offered


def test_why_zfs_is_missing_is_said_in_a_sentence(tmp_path: Path) -> None:
    refused = System(tmp_path / "refused", ZFS_TOOLS, ())
    assert refused.why_missing(Backend.ZFS) == (
        "the zfs kernel module is not loaded (under Secure Boot the kernel refuses an "
        "unsigned one)")
    absent = System(tmp_path / "absent", BTRFS_TOOLS, ())
    assert absent.why_missing(Backend.ZFS) == (
        "ZFS is not installed on this system (zpool is missing; the image was built without it)")
    assert absent.why_missing(Backend.BTRFS) == ""
