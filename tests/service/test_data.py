"""The data disk through the daemon, where this kernel suffices: BTRFS without
encryption on a loop device. LUKS2 and ZFS need the VM tier (tests/vm/test_data_vm.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from anklume_client.connection import Connection
from anklume_client.models import JobStatus
from anklume_client.proxies import DataDisk
from devtools import stickimg
from devtools.slowness import scaled
from tests.service.conftest import Sim

NOT_AUTHORIZED, NOT_FOUND, BUSY, REFUSED = 3, 5, 6, 10


def setup_plain(sim: Sim, *extra: str) -> subprocess.CompletedProcess[str]:
    return sim.ctl("data", "setup", "--disk", str(sim.data_disk), "--fs", "btrfs",
                   "--encryption", "none", "--pool-name", "vault", "--yes", *extra)


def data_status(sim: Sim) -> dict:  # type: ignore[type-arg]
    import json

    done = sim.ctl("data", "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_setup_lock_unlock_keeps_the_data(sim: Sim) -> None:
    assert data_status(sim)["State"] == "absent"
    done = setup_plain(sim)
    assert done.returncode == 0, done.stderr
    status = data_status(sim)
    assert (status["State"], status["Pool"], status["Backend"]) == ("mounted", "vault", "btrfs")
    data = Path(status["Mounts"]["data"])
    # No Incus answers here: its pool waits on the disk for anklume-incus-pool.service.
    assert (data / "incus-pool.env").read_text() == \
        f"POOL=vault\nDRIVER=btrfs\nSOURCE={data / 'incus'}\n"
    (data / "incus-state" / "note.txt").write_text("kept\n")
    conf = sim.persist_files()["pool.conf"]
    assert "POOL_NAME=vault" in conf and "POOL_TYPE=btrfs" in conf and "ENCRYPTION=none" in conf
    assert "FS_UUID=" in conf and "CREATED_AT=" in conf

    locked = sim.ctl("data", "lock")
    assert locked.returncode == 0, locked.stderr
    assert data_status(sim)["State"] == "locked"
    assert not (data / "incus-state" / "note.txt").exists()

    sim.restart_daemon()  # as after a reboot: found again from pool.conf
    unlocked = sim.ctl("data", "unlock")
    assert unlocked.returncode == 0, unlocked.stderr
    status = data_status(sim)
    assert status["State"] == "mounted"
    # The Incus state directory is bound from the data disk.
    incus_state = Path(status["Mounts"]["incus-state"])
    assert (incus_state / "note.txt").read_text() == "kept\n"


def test_the_boot_stick_is_refused_and_left_alone(sim: Sim) -> None:
    assert sim.stick is not None
    before = sim.persist_files()
    refused = sim.ctl("data", "setup", "--disk", str(sim.stick.loop), "--fs", "btrfs",
                      "--encryption", "none", "--yes")
    assert refused.returncode == REFUSED, refused.stderr
    assert "boot stick" in refused.stderr
    assert sim.persist_files() == before
    rows = {row[1]: row[7] for row in data_status(sim)["Candidates"]}
    assert "boot stick" in rows[str(sim.stick.loop)]
    assert rows[str(sim.data_disk)] == ""


def test_a_busy_disk_is_not_locked_and_the_holder_is_named(sim: Sim) -> None:
    assert setup_plain(sim).returncode == 0
    data = Path(data_status(sim)["Mounts"]["data"])
    holder = subprocess.Popen(["sleep", "60"], cwd=data)
    try:
        refused = sim.ctl("data", "lock")
        assert refused.returncode == BUSY, refused.stderr
        assert f"{holder.pid} (sleep)" in refused.stderr
        assert data_status(sim)["State"] == "mounted"
    finally:
        holder.kill()
        holder.wait()
    assert sim.ctl("data", "lock").returncode == 0


def test_setup_needs_authorization_and_erases_nothing_without_it(sim: Sim) -> None:
    sim.set_polkit("deny")
    subprocess.run(["mkfs.ext4", "-q", "-L", "precious", str(sim.data_disk)], check=True)
    refused = sim.ctl("data", "setup", "--disk", str(sim.data_disk), "--fs", "btrfs",
                      "--encryption", "none", "--yes", user="nobody")
    assert refused.returncode == NOT_AUTHORIZED, refused.stderr
    label = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", str(sim.data_disk)],
                           capture_output=True, text=True, check=False).stdout.strip()
    assert label == "precious"


def test_a_second_setup_is_refused(sim: Sim) -> None:
    assert setup_plain(sim).returncode == 0
    again = setup_plain(sim)
    assert again.returncode == 4, again.stderr
    assert "already set up" in again.stderr


def test_a_damaged_pool_conf_is_reported_not_trusted(sim: Sim) -> None:
    sim.edit_persist({"pool.conf": "POOL_NAME=../../etc\nPOOL_TYPE=ext4\n"})
    sim.restart_daemon()
    status = data_status(sim)
    assert status["State"] == "error"
    assert "pool.conf is damaged" in status["Message"]


def test_a_disk_plugged_in_later_is_noticed(sim: Sim) -> None:
    image = sim.workdir / "late.img"
    with image.open("wb") as f:
        f.truncate(300 << 20)
    loop = str(stickimg.find_loop(image))
    try:
        deadline = time.monotonic() + scaled(15)
        while time.monotonic() < deadline:
            if loop in {row[1] for row in data_status(sim)["Candidates"]}:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"{loop} never appeared among the candidates")
        # Probing it left nothing open: a disk the user pulls is not pinned.
        assert sim.daemon is not None
        fds = Path(f"/proc/{sim.daemon.pid}/fd")
        assert loop not in {os.readlink(fd) for fd in fds.iterdir()}
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_only_the_simulations_own_loop_devices_are_offered(sim: Sim, tmp_path: Path) -> None:
    """loop_disks_under: a disk image outside the simulation's directory (another
    test's, running beside it under pytest -n 2) is no candidate of its anklumed."""
    images = {}
    for name, folder in (("theirs", tmp_path), ("ours", sim.workdir)):
        images[name] = folder / f"{name}.img"
        with images[name].open("wb") as f:
            f.truncate(300 << 20)
    theirs = stickimg.find_loop(images["theirs"])
    ours = stickimg.find_loop(images["ours"])
    try:
        deadline = time.monotonic() + scaled(15)
        while str(ours) not in (shown := {row[1] for row in data_status(sim)["Candidates"]}):
            assert time.monotonic() < deadline, f"{ours} never appeared among the candidates"
            time.sleep(0.3)
        assert str(theirs) not in shown
    finally:
        for loop in (theirs, ours):
            subprocess.run(["losetup", "-d", loop], check=False)


def test_a_lock_that_cannot_unmount_leaves_everything_mounted(sim: Sim) -> None:
    assert setup_plain(sim).returncode == 0
    mounts = data_status(sim)["Mounts"]
    data, incus_state = Path(mounts["data"]), Path(mounts["incus-state"])
    # A mount inside the data disk holds it, though no process does.
    inner = data / "inner"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
    try:
        refused = sim.ctl("data", "lock")
        assert refused.returncode == BUSY, refused.stderr
        assert "stays mounted" in refused.stderr
        assert os.path.ismount(data) and os.path.ismount(incus_state)
        assert data_status(sim)["State"] == "mounted"
    finally:
        subprocess.run(["umount", str(inner)], check=True)
    assert sim.ctl("data", "lock").returncode == 0
    assert not os.path.ismount(incus_state)


def status_of(sim: Sim) -> tuple[dict, str]:  # type: ignore[type-arg]
    import json

    as_json, human = sim.ctl("status", "--json"), sim.ctl("status")
    assert as_json.returncode == 0 and human.returncode == 0, as_json.stderr + human.stderr
    return json.loads(as_json.stdout)["Data"], " ".join(human.stdout.split())


def test_status_shows_the_data_pool(sim: Sim) -> None:
    data, human = status_of(sim)
    assert (data["State"], data["Pool"], data["Backend"]) == ("absent", "", "")
    assert "Data disk absent (set one up with: anklumectl first-boot)" in human
    assert setup_plain(sim).returncode == 0
    data, human = status_of(sim)
    assert (data["State"], data["Pool"], data["Backend"], data["Encryption"]) == (
        "mounted", "vault", "btrfs", "none")
    assert "Candidates" not in data  # the disk table stays in `anklumectl data status`
    assert "Data disk pool vault (btrfs, none): mounted" in human
    assert sim.ctl("data", "lock").returncode == 0
    data, human = status_of(sim)
    assert data["State"] == "locked" and "pool vault (btrfs, none): locked" in human


def can_make(fs: str) -> bool:
    """Whether this machine can make ``fs``, seen from outside the daemon."""
    if fs == "zfs":
        return bool(shutil.which("zpool") and shutil.which("zfs")) \
            and Path("/sys/module/zfs").is_dir()
    return bool(shutil.which("mkfs.btrfs") and shutil.which("btrfs"))


def test_the_filesystems_offered_are_those_this_machine_can_make(sim: Sim) -> None:
    # This machine may have zpool and no zfs module (none built for its
    # kernel): ZFS must then not be offered, as on a --zfs stick under Secure Boot.
    assert data_status(sim)["Filesystems"] == [fs for fs in ("zfs", "btrfs") if can_make(fs)]


def label(device: object) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", str(device)],
                          capture_output=True, text=True, check=False).stdout.strip()


async def set_up_zfs(address: str, disk: str) -> JobStatus:
    conn = await Connection.connect(address)
    try:
        job = await DataDisk(conn).setup(disk, "vault", "zfs", "none", b"")
        return await job.follow(lambda _status: None)
    finally:
        await conn.close()


def test_zfs_where_this_machine_cannot_make_it_is_refused_and_nothing_erased(sim: Sim) -> None:
    if can_make("zfs"):
        pytest.skip("this machine can make ZFS")
    # A filesystem on the disk, which setup would erase first.
    subprocess.run(["mkfs.btrfs", "-q", "-f", "-L", "keepme", str(sim.data_disk)], check=True)
    # The daemon's own check (anklumectl refuses before asking anything).
    end = asyncio.run(set_up_zfs(sim.bus.address, str(sim.data_disk)))
    assert (end.state, end.error_name, end.error_code) == (
        "failed", "NotFound", "filesystem-unavailable"), end.message
    assert "choose btrfs" in end.message
    refused = sim.ctl("data", "setup", "--disk", str(sim.data_disk), "--fs", "zfs",
                      "--encryption", "none", "--yes")
    assert refused.returncode == NOT_FOUND, refused.stderr
    assert "cannot make zfs" in refused.stderr and "nothing was erased" in refused.stderr
    assert label(sim.data_disk) == "keepme"
    assert data_status(sim)["State"] == "absent"
