"""The data disk end to end on the built image (issue 14's first two boots).

A machine of its own (in /var/tmp/anklume-image-data-boots), booted twice,
each boot made when a test first needs it, in order:

1. its first boot, with nobody at the keyboard but the system credentials
   ``anklume-data-disk`` and ``anklume-data-passphrase``: the first-boot unit
   sets up LUKS2 + BTRFS on the NVMe disk unattended, Incus starts with its
   state on it and gets its storage pool (anklume-incus-pool.service); then
   the report script builds a tiny Incus image in the guest from its own
   busybox (no network), creates a container from it on the data pool, and
   the container writes a file;
2. the next boot, with the passphrase credential only: anklume-data-mount
   unlocks the disk before Incus, the container starts again by itself and
   its file is still there; ``anklumectl status`` says slot A good, boot
   count 0, and names the data pool.

Verdicts come from the report the guest writes (devtools/image_vm), never
from the console. Budgets are guest seconds on a quiet 2-core machine with
a margin, scaled by devtools/slowness.py; the report comes as soon as the
boot settles, so they cost only when a boot fails.
"""

from __future__ import annotations

import functools
import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.image_vm import DATA_SERIAL, Boot, Machine
from devtools.slowness import scaled
from tests.image.conftest import Built
from tests.image.test_boot_image import persist_files, reported, unit

pytestmark = pytest.mark.image
MACHINES = Path("/var/tmp/anklume-image-data-boots")
DATA_MIB = 512  # the smallest disk anklumed accepts is 256 MiB
PASSPHRASE = b"correct horse battery staple"  # a test secret: looked for in the logs
DATA_DISK = f"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_{DATA_SERIAL}"
DATA_UNITS = ["anklume-first-boot.service", "anklume-data-mount.service",
              "anklume-incus-pool.service", "incus-startup.service"]
BOOT_WAIT = 300.0  # guest seconds to a settled boot, quiet machine (scaled by the harness)
CONTAINER_WAIT = 90.0  # seconds from Incus answering to the container's file
CONTAINER = "probe"
IMAGE_ALIAS = "anklume-test-busybox"
INCUS = ["env", "INCUS_CONF=/run/anklume-test-incus", "incus"]

# A container image made in the guest from what the image carries: busybox
# and the libraries it links, an init that writes the file and waits, and
# Incus's metadata.yaml, imported as a unified tarball. No network anywhere.
MAKE_CONTAINER = r"""
set -eu
export INCUS_CONF=/run/anklume-test-incus
mkdir -p "$INCUS_CONF"
work=$(mktemp -d)
root=$work/rootfs
mkdir -p "$root/bin" "$root/sbin" "$root/root" "$root/proc" "$root/sys" "$root/dev" \
    "$root/tmp" "$root/etc" "$root/run"
cp /usr/bin/busybox "$root/bin/busybox"
for lib in $(ldd /usr/bin/busybox | grep -o '/[^ ]*'); do cp -L --parents "$lib" "$root"; done
cat > "$root/sbin/init" <<'INIT'
#!/bin/busybox sh
trap 'exit 0' PWR TERM
/bin/busybox echo "written by the container: TOKEN" > /root/hello
/bin/busybox sync
while :; do /bin/busybox sleep 1000 & wait $!; done
INIT
chmod 0755 "$root/sbin/init"
cat > "$work/metadata.yaml" <<META
architecture: x86_64
creation_date: $(date +%s)
properties:
  description: anklume image test, busybox from the guest
META
tar -C "$work" -cf "$work/image.tar" metadata.yaml rootfs
incus image import "$work/image.tar" --alias ALIAS
incus create ALIAS CONTAINER --storage POOL -c boot.autostart=true
incus start CONTAINER
"""

# Until the container runs and its file is there (its init wrote it): at most
# SECONDS, and not at all when Incus does not answer.
WAIT_FOR_FILE = r"""
export INCUS_CONF=/run/anklume-test-incus
mkdir -p "$INCUS_CONF"
incus info >/dev/null
end=$(( $(date +%s) + SECONDS ))
while [ "$(date +%s)" -lt "$end" ]; do
    if incus list CONTAINER --format csv --columns s | grep -qx RUNNING &&
            incus file pull CONTAINER/root/hello - 2>/dev/null; then
        exit 0
    fi
    sleep 2
done
exit 1
"""


def guest_script(template: str, **values: str) -> list[str]:
    for name, value in values.items():
        template = template.replace(name, value)
    return ["sh", "-c", template]


class DataBoots:
    """The machine's two boots, each made when a test first needs it (in order)."""

    def __init__(self, built: Built):
        shutil.rmtree(MACHINES, ignore_errors=True)
        # Two vCPUs: the boot's parallel work (udev, anklumed and anklumectl
        # starting side by side, Incus) on both cores.
        self.machine = Machine(built.image, MACHINES / "machine", data_mib=DATA_MIB, cpus=2)
        self.token = secrets.token_hex(8)  # the file's content, new each run

    def container_checks(self) -> dict[str, list[str]]:
        return {
            "wait_for_file": guest_script(WAIT_FOR_FILE, CONTAINER=CONTAINER,
                                          SECONDS=f"{scaled(CONTAINER_WAIT):.0f}"),
            "containers": [*INCUS, "list", "--format", "json"],
            "pools": [*INCUS, "storage", "list", "--format", "json"],
            "hello": [*INCUS, "file", "pull", f"{CONTAINER}/root/hello", "-"],
            "incus_state": ["findmnt", "--json", "/var/lib/incus"],
            "luks": ["cryptsetup", "luksDump", DATA_DISK],
            # Where the boot's time went, for a person (not judged).
            "journal": ["journalctl", "-b", "-o", "short-monotonic", "--no-pager"],
        }

    @functools.cached_property
    def setup(self) -> Boot:
        make = guest_script(MAKE_CONTAINER, TOKEN=self.token, ALIAS=IMAGE_ALIAS,
                            CONTAINER=CONTAINER, POOL="anklume")
        return self.machine.boot(
            credentials={"anklume-data-disk": DATA_DISK.encode(),
                         "anklume-data-passphrase": PASSPHRASE},
            commands={"make_container": make, **self.container_checks()},
            settle=DATA_UNITS, wait=BOOT_WAIT, timeout=BOOT_WAIT * 3)

    @functools.cached_property
    def persist_after_setup(self) -> dict[str, str]:
        assert self.setup.powered_off, self.setup.explain()
        return persist_files(self.machine, "setup")

    @functools.cached_property
    def unlock(self) -> Boot:
        self.persist_after_setup  # noqa: B018 -- the boots run in this order
        return self.machine.boot(credentials={"anklume-data-passphrase": PASSPHRASE},
                                 commands=self.container_checks(),
                                 settle=DATA_UNITS, wait=BOOT_WAIT, timeout=BOOT_WAIT * 3)


@pytest.fixture(scope="module")
def boots(built: Built) -> Iterator[DataBoots]:
    yield DataBoots(built)


def command(report: dict[str, Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = report["commands"][name]
    return result


def json_output(report: dict[str, Any], name: str) -> Any:
    result = command(report, name)
    assert result["rc"] == 0, result
    return json.loads(result["stdout"])


def container(report: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in json_output(report, "containers") if c["name"] == CONTAINER]
    assert found, command(report, "containers")
    state: dict[str, Any] = found[0]
    return state


def assert_incus_state_on_the_data_disk(report: dict[str, Any]) -> None:
    mounts = json_output(report, "incus_state")["filesystems"]
    assert mounts and "anklume-data" in mounts[0]["source"], mounts


def test_first_boot_sets_up_the_luks2_data_disk_from_credentials(boots: DataBoots) -> None:
    report = reported(boots.setup)
    assert unit(report, "anklume-first-boot.service")["Result"] == "success", \
        report["anklume_journal"]
    data = report["data"]
    assert data is not None, report["data_raw"]
    assert (data["State"], data["Pool"], data["Encryption"], data["Backend"]) == \
        ("mounted", "anklume", "luks2", "btrfs"), data
    assert "pool.conf" in boots.persist_after_setup
    luks = subprocess.run(["cryptsetup", "isLuks", "--type", "luks2", str(boots.machine.data)],
                          check=False)
    assert luks.returncode == 0, "the data disk carries no LUKS2 header"
    assert unit(report, "boot-complete.target")["ActiveState"] == "active"
    assert report["failed"] == [], report["errors"]


def test_first_boot_incus_runs_on_the_data_disk_and_a_local_container_writes(
        boots: DataBoots) -> None:
    report = reported(boots.setup)
    assert unit(report, "anklume-incus-pool.service")["Result"] == "success", \
        report["anklume_journal"]
    assert unit(report, "incus.service")["ActiveState"] == "active", report["anklume_journal"]
    assert_incus_state_on_the_data_disk(report)
    pools = {p["name"]: p for p in json_output(report, "pools")}
    assert pools["anklume"]["driver"] == "btrfs", pools
    assert pools["anklume"]["config"]["source"] == "/mnt/anklume-data/incus", pools
    made = command(report, "make_container")
    assert made["rc"] == 0, made
    assert command(report, "wait_for_file")["rc"] == 0, command(report, "wait_for_file")
    probe = container(report)
    assert probe["status"] == "Running", probe
    assert probe["expanded_devices"]["root"]["pool"] == "anklume", probe
    hello = command(report, "hello")
    assert hello["stdout"] == f"written by the container: {boots.token}\n", hello


def test_the_next_boot_unlocks_the_disk_and_the_container_and_its_file_are_there(
        boots: DataBoots) -> None:
    report = reported(boots.unlock)
    assert unit(report, "anklume-first-boot.service")["ActiveState"] == "inactive", \
        "the first-boot unit ran again"
    assert unit(report, "anklume-data-mount.service")["Result"] == "success", \
        report["anklume_journal"]
    assert report["failed"] == [], report["errors"]
    assert_incus_state_on_the_data_disk(report)
    assert command(report, "wait_for_file")["rc"] == 0, command(report, "wait_for_file")
    probe = container(report)
    assert probe["status"] == "Running", probe  # boot.autostart: started by Incus itself
    hello = command(report, "hello")
    assert hello["stdout"] == f"written by the container: {boots.token}\n", hello


def test_the_next_boot_status_says_slot_a_good_count_zero_and_the_pool(
        boots: DataBoots) -> None:
    report = reported(boots.unlock)
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["BootState"], status["BootCount"]) == ("A", "good", 0)
    data = status["Data"]
    assert (data["State"], data["Pool"], data["Encryption"]) == \
        ("mounted", "anklume", "luks2"), data


def test_the_passphrase_is_in_no_log(boots: DataBoots) -> None:
    for boot in (boots.setup, boots.unlock):
        assert PASSPHRASE.decode() not in boot.console
        report = reported(boot)
        logs = report["errors"] + report["anklume_journal"]
        assert PASSPHRASE.decode() not in "\n".join(logs)
