"""First real-kernel tests: dm-verity on a slot, LUKS2 + btrfs, the guest's disks."""

from __future__ import annotations

import mmap
import os
import shutil
from pathlib import Path

import pytest

from anklumed.command import run
from anklumed.data import btrfs, luks
from anklumed.errors import IncorrectPassphrase, VerificationFailed
from anklumed.persist import PersistStore
from anklumed.slots import verity
from anklumed.slots.model import read_slots_state, verity_file
from anklumed.stick import SlotName
from devtools import stickimg

pytestmark = pytest.mark.vm


def tree_and_hash(stick: stickimg.Stick, dest: Path) -> str:
    """Copy slot A's tree out of PERSIST, as anklumed does before opening a slot."""
    store = PersistStore(stick.persist, mountpoint=dest.parent / "persist")
    with store.transaction() as pdir:
        state = read_slots_state(pdir)
        shutil.copyfile(pdir.path(verity_file(SlotName.A)), dest)
    root_hash = state.meta[SlotName.A].root_hash
    assert root_hash is not None
    return root_hash


def test_slot_opens_with_the_tree_kept_in_persist(stick: stickimg.Stick, tmp_path: Path) -> None:
    tree = tmp_path / "A.verity"
    root_hash = tree_and_hash(stick, tree)
    with stickimg.slot_mounted(stick.part(2), tree, root_hash, "anklume-test-a",
                               tmp_path / "slot") as mnt:
        assert (mnt / "etc/anklume-release").read_text() == "VERSION=1.0.0\n"
    verity.verify(stick.part(2), tree, root_hash)


def test_wrong_root_hash_is_refused(stick: stickimg.Stick, tmp_path: Path) -> None:
    tree = tmp_path / "A.verity"
    root_hash = tree_and_hash(stick, tree)
    wrong = ("0" if root_hash[0] != "0" else "1") + root_hash[1:]
    with pytest.raises(VerificationFailed):
        verity.open_device(stick.part(2), tree, wrong, "anklume-test-wrong")
    assert not Path("/dev/mapper/anklume-test-wrong").exists()


def test_a_flipped_byte_in_the_slot_is_caught(stick: stickimg.Stick, tmp_path: Path) -> None:
    tree = tmp_path / "A.verity"
    root_hash = tree_and_hash(stick, tree)
    # Inside the first block: the test image's squashfs is only a few KiB.
    with stick.part(2).open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(VerificationFailed):
        verity.verify(stick.part(2), tree, root_hash)
    # Opening reads block 0, which is the corrupted one: refused at once.
    with pytest.raises(VerificationFailed):
        verity.open_device(stick.part(2), tree, root_hash, "anklume-test-flip")
    assert not Path("/dev/mapper/anklume-test-flip").exists()
    # Mapped without that check, the kernel refuses the block when it is read.
    run(["veritysetup", "open", stick.part(2), "anklume-test-flip", tree, root_hash])
    device = Path("/dev/mapper/anklume-test-flip")
    try:
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 4096)  # O_DIRECT needs an aligned buffer
            os.lseek(fd, 0, os.SEEK_SET)
            with pytest.raises(OSError) as caught:
                os.readv(fd, [buf])
            assert caught.value.errno == 5  # EIO: the kernel refuses the block
        finally:
            os.close(fd)
    finally:
        verity.close_device("anklume-test-flip")


def test_luks2_btrfs_round_trip(loop_disk: Path, tmp_path: Path) -> None:
    secret = b"correct horse battery staple"
    uuid = luks.format_luks2(loop_disk, secret, label="anklume-test",
                             memory_kib=32 * 1024, iterations=4)
    assert luks.is_luks(loop_disk) and len(uuid) == 36
    mnt = tmp_path / "data"
    device = luks.open_luks(loop_disk, secret, "anklume-data-test")
    try:
        btrfs.make_filesystem(device, "anklume-test")
        btrfs.mount(device, mnt)
        btrfs.create_subvolume(mnt, "incus")
        (mnt / "incus" / "kept.txt").write_text("still here\n")
        assert btrfs.subvolumes(mnt) == ["incus"]
        btrfs.unmount(mnt)
    finally:
        luks.close_luks("anklume-data-test")

    with pytest.raises(IncorrectPassphrase):
        luks.open_luks(loop_disk, b"wrong horse", "anklume-data-test")
    assert not Path("/dev/mapper/anklume-data-test").exists()

    device = luks.open_luks(loop_disk, secret, "anklume-data-test")
    try:
        btrfs.mount(device, mnt, subvolume="incus")
        assert (mnt / "kept.txt").read_text() == "still here\n"
        assert "compress=zstd" in Path("/proc/mounts").read_text()
        btrfs.unmount(mnt)
    finally:
        luks.close_luks("anklume-data-test")


def test_the_host_plugs_and_pulls_disks() -> None:
    from devtools.vm import guestctl
    disk = guestctl.plug("anklume-test-usb", "usb", size=64 * 1024 * 1024)
    assert disk.exists()
    removable = Path("/sys/block") / disk.name / "removable"
    assert removable.read_text().strip() == "1"
    guestctl.unplug("anklume-test-usb")
    assert guestctl.find_disk("anklume-test-usb") is None


def test_luks2_zfs_round_trip(loop_disk: Path, tmp_path: Path) -> None:
    from anklumed.data import zfs
    if run(["modprobe", "zfs"], check=False).returncode != 0:
        pytest.skip("no ZFS module for this kernel: build it with "
                    "`.venv/bin/python -m devtools.vm.kernel --zfs` (about 4 min)")
    secret = b"another passphrase"
    luks.format_luks2(loop_disk, secret, label="anklume-test", memory_kib=32 * 1024,
                      iterations=4)
    device = luks.open_luks(loop_disk, secret, "anklume-data-ztest")
    mountpoint = tmp_path / "pool"
    try:
        zfs.create_pool("ztest", device, mountpoint)
        zfs.create_dataset("ztest", "incus")
        (mountpoint / "incus" / "kept.txt").write_text("on zfs\n")
        assert zfs.dataset_property("ztest", "compression") == "zstd"
        assert zfs.pool_property("ztest", "ashift") == "12"
        zfs.export_pool("ztest")
    finally:
        luks.close_luks("anklume-data-ztest")
    device = luks.open_luks(loop_disk, secret, "anklume-data-ztest")
    try:
        zfs.import_pool("ztest", device.parent)
        assert (mountpoint / "incus" / "kept.txt").read_text() == "on zfs\n"
        zfs.export_pool("ztest")
    finally:
        luks.close_luks("anklume-data-ztest")
