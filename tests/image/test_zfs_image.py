"""The ZFS image tier, run by hand (``pytest --zfs-image``; README, the
tiers): the default product -- an image built with ZFS (zfs-dkms compiled
in the build's chroot, anklume_image/zfs.py) -- booted under OVMF as the
image tier boots its own (devtools/image_vm), twice, as one machine whose
firmware enforces Secure Boot with the image's test certificate enrolled
(test_secure_boot.py's store): the kernel is locked down and loads spl and
zfs only because the build signed them with that key (module_signing.py):

0. before any boot, the slot as built: spl and zfs, installed and in DKMS's
   tree, signed by the test db key; neither that key's bytes nor its path
   anywhere in the image or in its slot's files;

1. the first boot, from the menu's "run from the stick" entry, with nobody
   at the keyboard but the system credentials ``anklume-data-disk`` and
   ``anklume-data-passphrase`` (no ``anklume-data-fs``: ZFS is the default
   where its module is loaded): the zfs module loads (systemd-modules-load,
   zfsutils-linux's modules-load.d), the first-boot unit makes the NVMe disk
   LUKS2 with a ZFS pool on it,
   Incus starts with its state on the pool and gets a storage pool on its
   ``incus`` dataset, and a container made in the guest (test_boot_image.py's
   busybox image, no network) writes a file;
2. the next boot, with the passphrase credential only: anklume-data-mount
   unlocks the disk and imports the pool the first boot left imported (it
   is never exported at poweroff) without ``-f``: the image's fixed hostid
   (anklume_image/zfs.py) is the one the pool recorded, so no "pool was
   previously in use from another system"; Incus, the container and its
   file are there; ``anklumectl status`` shows the pool.

Not in .ci/run: the build compiles zfs-dkms (about 7 minutes of the 60), and
the image tier's own image is built without ZFS for that reason. Without
--zfs-image these tests are deselected (tests/conftest.py), so the image
tier, which collects this directory, skips nothing.
ANKLUME_IMAGE_REUSE=1 keeps the built image for the next run.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anklume_image.build import build
from anklume_image.module_signing import SIGNATURE_MAGIC
from anklume_image.zfs import HOSTID
from devtools.image_vm import Boot, Machine
from devtools.slowness import scaled
from tests.image.conftest import SOURCE_DATE_EPOCH, built_in, make_test_keys, small_config
from tests.image.test_boot_image import (
    BOOT_WAIT,
    CONTAINER,
    CONTAINER_WAIT,
    DATA_DISK,
    DATA_MIB,
    DATA_UNITS,
    IMAGE_ALIAS,
    INCUS,
    MAKE_CONTAINER,
    PASSPHRASE,
    STICK_ENTRY_A,
    WAIT_FOR_FILE,
    assert_the_first_boot_set_up_the_data_disk,
    assert_the_passphrase_is_in_no_log,
    command,
    container,
    guest_script,
    json_output,
    reported,
    unit,
)
from tests.image.test_secure_boot import efi_variable, enrolled_vars, value_of

pytestmark = pytest.mark.zfs_image
WORK = Path(os.environ.get("ANKLUME_ZFS_IMAGE_TEST_DIR", "/var/tmp/anklume-image-zfs"))
MACHINES = Path("/var/tmp/anklume-image-zfs-boots")
POOL = "anklume"
MAPPER = f"/dev/mapper/anklume-data-{POOL}"  # anklumed's name for the opened disk
# What `zpool import` says of a pool another host left imported.
IN_USE = "in use from another system"
# DKMS's modules in the slot: installed, and DKMS's own copies.
DKMS_MODULES = ("usr/lib/modules/*/updates", "var/lib/dkms")
TEST_DB = "anklume test db"  # make_test_keys's certificate


@pytest.fixture(scope="session")
def image() -> Iterator[Path]:
    """The image tier's small image (tests/image/conftest.py), with ZFS, as
    the default build has it; signed for Secure Boot too (a test key)."""
    if os.geteuid() != 0:
        pytest.skip("the ZFS image tier needs root (mmdebstrap, mke2fs -d as root)")

    def make() -> Path:
        make_test_keys(WORK)
        return build(small_config(WORK / "anklume-live.img", zfs=True,
                                  signing_key=WORK / "signing.pem",
                                  secure_boot_key=WORK / "db.key",
                                  secure_boot_cert=WORK / "db.crt",
                                  # its signatures dated with it (faketime): the
                                  # firmware must boot them as it boots others
                                  source_date_epoch=SOURCE_DATE_EPOCH))

    yield from built_in(WORK, make)


def zfs_facts() -> dict[str, list[str]]:
    """What each boot reports of Secure Boot, ZFS, the pool and Incus on it."""
    return {
        "secure_boot": efi_variable("SecureBoot"),
        "lockdown": ["cat", "/sys/kernel/security/lockdown"],
        "zfs_load_module": ["systemctl", "show", "-p", "ActiveState,Result",
                            "zfs-load-module.service"],
        "zfs_version": ["cat", "/sys/module/zfs/version"],
        "zfs_kernel_log": ["sh", "-c", "dmesg | grep -iE 'zfs|spl|module verification'"],
        "hostid": ["hostid"],
        "pool": ["zpool", "list", "-H", "-P", "-v", "-o", "name,health", POOL],
        "datasets": ["zfs", "list", "-H", "-r", "-o", "name,mountpoint,mounted", POOL],
        "incus_state": ["findmnt", "--json", "/var/lib/incus"],
        "wait_for_file": guest_script(WAIT_FOR_FILE, CONTAINER=CONTAINER,
                                      SECONDS=f"{scaled(CONTAINER_WAIT):.0f}"),
        "containers": [*INCUS, "list", "--format", "json"],
        "pools": [*INCUS, "storage", "list", "--format", "json"],
        "hello": [*INCUS, "file", "pull", f"{CONTAINER}/root/hello", "-"],
        "status_text": ["env", "COLUMNS=200", "anklumectl", "status"],
        # What the pool went through: created, imported (how).
        "pool_history": ["zpool", "history", "-il", POOL],
        "journal": ["journalctl", "-b", "-o", "short-monotonic", "--no-pager"],
    }


class Boots:
    """The machine's two boots, each made when a test first needs it (in order)."""

    def __init__(self, image: Path):
        shutil.rmtree(MACHINES, ignore_errors=True)
        MACHINES.mkdir(parents=True)
        self.machine = Machine(image, MACHINES / "machine", data_mib=DATA_MIB, secure_boot=True,
                               vars_template=enrolled_vars(WORK / "db.crt",
                                                           MACHINES / "OVMF_VARS.enrolled.fd"))
        self.token = secrets.token_hex(8)

    @functools.cached_property
    def first(self) -> Boot:
        make = guest_script(MAKE_CONTAINER, TOKEN=self.token, ALIAS=IMAGE_ALIAS,
                            CONTAINER=CONTAINER, POOL=POOL)
        self.machine.choose_entry_once(STICK_ENTRY_A)
        return self.kept(self.machine.boot(
            # No anklume-data-fs: where ZFS works it is the default (DataDisk's
            # Filesystems, zfs first once its module is loaded).
            credentials={"anklume-data-disk": DATA_DISK.encode(),
                         "anklume-data-passphrase": PASSPHRASE},
            commands={"make_container": make, **zfs_facts()},
            settle=DATA_UNITS, wait=BOOT_WAIT, timeout=BOOT_WAIT * 3))

    @functools.cached_property
    def next(self) -> Boot:
        assert self.first.powered_off, self.first.explain()
        self.machine.choose_entry_once(STICK_ENTRY_A)
        return self.kept(self.machine.boot(
            credentials={"anklume-data-passphrase": PASSPHRASE},
            commands=zfs_facts(), settle=DATA_UNITS, wait=BOOT_WAIT, timeout=BOOT_WAIT * 3))

    @staticmethod
    def kept(boot: Boot) -> Boot:
        """The boot's time on the host, beside its report for a person."""
        (boot.rundir / "seconds").write_text(f"{boot.seconds:.0f}\n")
        return boot


@pytest.fixture(scope="module")
def boots(image: Path) -> Boots:
    return Boots(image)


def lines(report: dict[str, Any], name: str) -> list[list[str]]:
    result = command(report, name)
    assert result["rc"] == 0, result
    return [line.split("\t") for line in result["stdout"].splitlines()]


def assert_the_pool_is_online_on_the_opened_disk(report: dict[str, Any]) -> None:
    """`zpool list -v -P`: the pool, then its one vdev, the LUKS mapping
    (indented; a vdev's row has every column whatever -o asks)."""
    pool = lines(report, "pool")
    assert pool[0] == [POOL, "ONLINE"], pool
    vdevs = [[cell for cell in row if cell] for row in pool[1:]]
    assert [(row[0], row[-1]) for row in vdevs] == [(MAPPER, "ONLINE")], pool


def assert_incus_state_on_the_pool(report: dict[str, Any]) -> None:
    mounts = json_output(report, "incus_state")["filesystems"]
    assert [(m["source"], m["fstype"]) for m in mounts] == \
        [(f"{POOL}/incus-state", "zfs")], mounts


def assert_the_container_and_its_file_are_there(report: dict[str, Any], token: str) -> None:
    assert_incus_state_on_the_pool(report)
    assert command(report, "wait_for_file")["rc"] == 0, command(report, "wait_for_file")
    probe = container(report)
    assert probe["status"] == "Running", probe  # boot.autostart: started by Incus itself
    assert probe["expanded_devices"]["root"]["pool"] == POOL, probe
    hello = command(report, "hello")
    assert hello["stdout"] == f"written by the container: {token}\n", hello
    datasets = {row[0] for row in lines(report, "datasets")}
    assert f"{POOL}/incus/containers/{CONTAINER}" in datasets, datasets


# ---- 0. the slot as built --------------------------------------------------------

def slot_squashfs(image: Path) -> Path:
    return next(image.with_name(image.name + ".bundle").glob("*.squashfs"))


def test_the_dkms_modules_are_signed_with_the_secure_boot_key(image: Path,
                                                              tmp_path: Path) -> None:
    subprocess.run(["unsquashfs", "-q", "-n", "-d", tmp_path / "root", slot_squashfs(image),
                    *DKMS_MODULES], check=True)
    modules = sorted((tmp_path / "root").rglob("*.ko*"))
    assert sorted({m.name for m in modules}) == ["spl.ko.xz", "zfs.ko.xz"], modules
    assert len(modules) == 4, modules  # installed, and DKMS's copies
    serial = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", WORK / "db.crt"],
                            capture_output=True, text=True, check=True).stdout
    for module in modules:
        info = subprocess.run(["modinfo", "-F", "signer", module], capture_output=True,
                              text=True, check=True).stdout
        key = subprocess.run(["modinfo", "-F", "sig_key", module], capture_output=True,
                             text=True, check=True).stdout
        assert (info.strip(), key.strip().replace(":", "")) == \
            (TEST_DB, serial.strip().removeprefix("serial=")), module
        # one signature: DKMS signed nothing before the build did
        assert subprocess.run(["xz", "-dc", module], capture_output=True, check=True
                              ).stdout.count(SIGNATURE_MAGIC) == 1, module


def test_the_secure_boot_key_is_nowhere_in_the_image(image: Path, tmp_path: Path) -> None:
    """Its PEM lines and its path: in the image's bytes (the ESP and PERSIST
    are not compressed) and in every file of the slot (sqfs2tar's stream)."""
    key = WORK / "db.key"
    lines = [line for line in key.read_text().splitlines() if not line.startswith("-----")]
    patterns = tmp_path / "patterns"
    patterns.write_text("\n".join([*lines, str(key)]) + "\n")
    grep: list[str | Path] = ["grep", "-a", "-F", "-c", "-f", patterns]
    in_image = subprocess.run([*grep, image], capture_output=True, text=True)
    assert (in_image.returncode, in_image.stdout.strip()) == (1, "0"), in_image
    with subprocess.Popen(["sqfs2tar", slot_squashfs(image)], stdout=subprocess.PIPE) as tar:
        in_slot = subprocess.run(grep, stdin=tar.stdout, capture_output=True, text=True)
    assert tar.returncode == 0
    assert (in_slot.returncode, in_slot.stdout.strip()) == (1, "0"), in_slot


# ---- 1. the first boot --------------------------------------------------------

def test_under_secure_boot_the_zfs_module_the_build_compiled_and_signed_loads(
        boots: Boots) -> None:
    report = reported(boots.first)
    assert value_of(command(report, "secure_boot")) == 1
    assert "[integrity]" in command(report, "lockdown")["stdout"], command(report, "lockdown")
    version = command(report, "zfs_version")
    assert version["rc"] == 0 and version["stdout"].strip(), version
    kernel = command(report, "zfs_kernel_log")["stdout"]
    assert "ZFS: Loaded module" in kernel, kernel
    assert "module verification failed" not in kernel, kernel  # signed, by a key it trusts
    # (systemctl show prints the properties in its own order)
    assert sorted(command(report, "zfs_load_module")["stdout"].split()) == \
        ["ActiveState=active", "Result=success"], command(report, "zfs_load_module")
    assert report["failed"] == [], report["errors"]


def test_first_boot_sets_up_luks2_with_a_zfs_pool_from_credentials(boots: Boots) -> None:
    report = reported(boots.first)
    assert_the_first_boot_set_up_the_data_disk(report, boots.machine, "zfs")
    assert_the_pool_is_online_on_the_opened_disk(report)
    datasets = {row[0]: row[1:] for row in lines(report, "datasets")}
    assert datasets[POOL] == ["/mnt/anklume-data", "yes"], datasets
    assert datasets[f"{POOL}/incus-state"] == ["/mnt/anklume-data/incus-state", "yes"], datasets
    assert unit(report, "boot-complete.target")["ActiveState"] == "active"


def test_first_boot_incus_runs_on_the_pool_and_a_local_container_writes(
        boots: Boots) -> None:
    report = reported(boots.first)
    assert unit(report, "anklume-incus-pool.service")["Result"] == "success", \
        report["anklume_journal"]
    assert unit(report, "incus.service")["ActiveState"] == "active", report["anklume_journal"]
    pools = {p["name"]: p for p in json_output(report, "pools")}
    assert pools[POOL]["driver"] == "zfs", pools
    assert pools[POOL]["config"]["source"] == f"{POOL}/incus", pools
    made = command(report, "make_container")
    assert made["rc"] == 0, made
    assert_the_container_and_its_file_are_there(report, boots.token)


# ---- 2. the next boot: the pool imported again ----------------------------------

def test_the_next_boot_imports_the_pool_from_the_unlocked_disk(boots: Boots) -> None:
    """The pool the first boot left imported comes back without -f: the
    image's hostid is the one the pool recorded."""
    report = reported(boots.next)
    assert unit(report, "anklume-first-boot.service")["ActiveState"] == "inactive", \
        "the first-boot unit ran again"
    assert unit(report, "anklume-data-mount.service")["Result"] == "success", \
        report["anklume_journal"]
    assert command(report, "hostid")["stdout"].strip() == f"{HOSTID:08x}"
    assert IN_USE not in "\n".join(report["anklume_journal"])
    imports = [line for line in command(report, "pool_history")["stdout"].splitlines()
               if " zpool import " in line]
    assert len(imports) == 1 and " -f " not in imports[0], imports
    assert_the_pool_is_online_on_the_opened_disk(report)
    assert report["failed"] == [], report["errors"]


def test_the_next_boot_the_container_and_its_file_are_there(boots: Boots) -> None:
    assert_the_container_and_its_file_are_there(reported(boots.next), boots.token)


def test_the_next_boot_status_shows_the_pool(boots: Boots) -> None:
    report = reported(boots.next)
    status = report["status"]
    assert status is not None, report["status_raw"]
    data = status["Data"]
    assert (data["State"], data["Pool"], data["Backend"], data["Encryption"]) == \
        ("mounted", POOL, "zfs", "luks2"), data
    text = command(report, "status_text")
    assert text["rc"] == 0, text
    assert f"pool {POOL} (zfs, luks2): mounted" in text["stdout"], text["stdout"]


def test_the_passphrase_is_in_no_log(boots: Boots) -> None:
    assert_the_passphrase_is_in_no_log(boots.first, boots.next)
