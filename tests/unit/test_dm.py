"""The pulled-disk checks of anklumed/data/dm.py on a made-up /sys/block.

The kernel side is exercised in the VM tier (tests/vm/test_data_vm.py pulls
a QEMU USB disk); this pins down how the sysfs facts are read."""

from pathlib import Path

import pytest

from anklumed.data import dm


def mapping(sys_block: Path, dm_n: str, name: str, slaves: dict[str, bool],
            suspended: str = "0") -> None:
    """dm-N called ``name``, with slave links that resolve (True) or dangle."""
    (sys_block / dm_n / "dm").mkdir(parents=True)
    (sys_block / dm_n / "dm" / "name").write_text(name + "\n")
    (sys_block / dm_n / "dm" / "suspended").write_text(suspended + "\n")
    (sys_block / dm_n / "slaves").mkdir()
    for slave, present in slaves.items():
        target = sys_block / "devices" / slave
        if present:
            target.mkdir(parents=True)
        (sys_block / dm_n / "slaves" / slave).symlink_to(target)


@pytest.fixture
def sys_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(dm, "SYS_BLOCK", tmp_path)
    return tmp_path


def test_a_mapping_on_a_present_disk_is_not_pulled(sys_block: Path) -> None:
    mapping(sys_block, "dm-0", "anklume-data-vault", {"sda": True})
    assert dm.exists("anklume-data-vault")
    assert not dm.backing_gone("anklume-data-vault")
    assert not dm.given_up("anklume-data-vault")
    assert not dm.is_held("anklume-data-vault")


def test_a_dangling_slave_means_the_disk_was_pulled(sys_block: Path) -> None:
    mapping(sys_block, "dm-0", "other", {"sdb": True})
    mapping(sys_block, "dm-3", "anklume-data-vault", {"sda": False}, suspended="1")
    assert dm.backing_gone("anklume-data-vault")
    assert dm.is_held("anklume-data-vault")
    assert not dm.backing_gone("other")


def test_no_slave_at_all_is_a_wiped_table(sys_block: Path) -> None:
    mapping(sys_block, "dm-1", "anklume-data-vault", {})
    assert dm.given_up("anklume-data-vault")
    assert not dm.backing_gone("anklume-data-vault")


def test_no_mapping_by_that_name(sys_block: Path) -> None:
    mapping(sys_block, "dm-0", "anklume-data-other", {"sda": False})
    for check in (dm.exists, dm.backing_gone, dm.given_up, dm.is_held):
        assert not check("anklume-data-vault")
