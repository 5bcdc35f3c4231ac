"""The built stick image booted as a PC boots it -- OVMF, systemd-boot, the
initramfs, systemd, anklumed, under QEMU (TCG), one process per boot -- and
the life of one machine (in /var/tmp/anklume-image-boots) with
it, issue 14's first boots and update. Each boot is made when a test first
needs it, in order:

1. the first boot, with nobody at the keyboard but the system credentials
   ``anklume-data-disk`` and ``anklume-data-passphrase``, from the menu's
   "run from the stick" entry (chosen once, as ``bootctl set-oneshot``
   does): slot A from the stick, verified by its signed manifest and marked
   good, the menu untouched (that entry is not counted);
   the first-boot unit sets up LUKS2 + BTRFS on the NVMe disk unattended,
   Incus starts with its state on it and gets its storage pool
   (anklume-incus-pool.service); then the report script builds a tiny Incus
   image in the guest from its own busybox (no network), creates a container
   from it on the data pool, and the container writes a file. (The first
   boot without credentials, where the wizard waits for a person on tty1,
   is test_secure_boot.py's signed boot.)
2. the next boot, from the stick's entry again, with the passphrase
   credential only: anklume-data-mount
   unlocks the disk before Incus, the container starts again by itself and
   its file is still there; ``anklumectl status`` says slot A good, boot
   count 0, and names the data pool. Then ``anklumectl update URL`` of the
   next version's bundle, served by a web server on the host that the guest
   reaches through QEMU's user networking (this boot only).
3. the boot after the update, from the menu's default entry: counted by
   systemd-boot, slot B with B's own UKI, marked good (the entry renewed);
   the container and its file are still there. Then, the OS in RAM (toram,
   the default entry's), the stick is pulled (QMP ``device_del`` when the
   guest asks): the container keeps running, ``anklumectl status`` says the
   stick is gone, and it said it was safe to remove before.

Only the third boot copies the OS to RAM (about 500 MiB: a minute or more
under TCG); the first two are not about toram, and take the entry a person
picks to run from the stick.

Verdicts come from the report the guest writes (devtools/image_vm), never
from the console; each boot's run directory keeps the console, QEMU's
command line and the report for a person. PERSIST and the ESP are read on
the host after the machine powered off, as the next boot's initramfs and
systemd-boot would read them. Budgets are guest seconds on a quiet 2-core
machine with a margin, scaled by devtools/slowness.py; the report comes as
soon as the boot settles, so they cost only when a boot fails.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anklumed.slots.boot_entries import UKI_IN_IMAGE
from anklumed.slots.bundle import parse_manifest
from anklumed.slots.kernel_signer import slot_signers
from devtools.bundle_server import BundleServer, serving
from devtools.image_vm import (
    CONTROL_PORT,
    DATA_SERIAL,
    GUEST_ADDRESS,
    HOST_FROM_GUEST,
    PULL_STICK,
    STUB_IMAGE,
    Boot,
    Machine,
)
from devtools.slowness import scaled
from tests.image.conftest import Built
from tests.image.test_build import extract

pytestmark = pytest.mark.image
# Beside the build (removed with it at the session's end), so kept apart: a
# failed boot's console stays for a person until the next run.
MACHINES = Path("/var/tmp/anklume-image-boots")
DATA_MIB = 512  # the smallest disk anklumed accepts is 256 MiB
PASSPHRASE = b"correct horse battery staple"  # a test secret: looked for in the logs
DATA_DISK = f"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_{DATA_SERIAL}"
DATA_UNITS = ["anklume-first-boot.service", "anklume-data-mount.service",
              "anklume-incus-pool.service", "incus-startup.service"]
BOOT_WAIT = 300.0  # guest seconds to a settled boot, quiet machine (scaled by the harness)
CONTAINER_WAIT = 90.0  # seconds from Incus answering to the container's file
UPDATE_WAIT = 300.0  # the update's download, write and checks in the guest
CONTAINER = "probe"
IMAGE_ALIAS = "anklume-test-busybox"
INCUS = ["env", "INCUS_CONF=/run/anklume-test-incus", "incus"]
NEXT_VERSION = "1.0.1"
# The menu's "run from the stick" entry for slot A (anklumed/slots/boot_entries.py).
STICK_ENTRY_A = "anklume-3-stick-a.conf"
BUILT_MENU = ["anklume-1-live-a+3-0.conf", STICK_ENTRY_A, "anklume-4-slot-a.conf"]

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

# The image configures no network (the stick is offline by design): the
# test gives the one card QEMU's user networking added its address, and no
# route beyond that network.
NETWORK_UP = r"""
set -eu
for dev in /sys/class/net/*; do
    [ -e "$dev/device" ] || continue
    ip link set "${dev##*/}" up
    ip address add ADDRESS dev "${dev##*/}"
    exit 0
done
echo "no network card" >&2
exit 1
"""


# The stick pulled once the OS runs from RAM: the host is asked on the
# control port, and the guest waits until anklumed no longer sees it.
PULL = r"""
echo REQUEST > /dev/virtio-ports/PORT
end=$(( $(date +%s) + SECONDS ))
while [ "$(date +%s)" -lt "$end" ]; do
    if anklumectl status --json |
            python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["BootMediaPresent"])'
    then
        exit 0
    fi
    sleep 1
done
exit 1
"""
PULL_WAIT = 60.0  # seconds from the request to anklumed's seeing the stick gone


# Every SHA-256 the guest's kernel can offer, the CPU's own loaded first (the
# real root's udev loads it for the CPU anyway; asked here so that the
# comparison never depends on udev's timing).
SHA256_DRIVERS = ["sh", "-c", "modprobe -q crypto-sha256; cat /proc/crypto"]


def guest_script(template: str, **values: str) -> list[str]:
    for name, value in values.items():
        template = template.replace(name, value)
    return ["sh", "-c", template]


def persist_files(machine: Machine, name: str) -> dict[str, str]:
    """PERSIST's files as the machine left them (a copy mounted read-write: its
    journal replayed, as after a power cut)."""
    part = extract(machine.stick, 4, machine.rundir / f"persist-{name}.img")
    mnt = machine.rundir / f"persist-{name}"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(part), str(mnt)], check=True)
    try:
        return {str(p.relative_to(mnt)): p.read_text(errors="replace")
                for p in mnt.rglob("*") if p.is_file() and p.stat().st_size < 4096}
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        part.unlink()


def esp_entries(machine: Machine, name: str) -> list[str]:
    esp = extract(machine.stick, 1, machine.rundir / f"esp-{name}.img")
    try:
        listing = subprocess.run(["mdir", "-i", str(esp), "-b", "::/loader/entries"],
                                 check=True, capture_output=True, text=True).stdout
    finally:
        esp.unlink()
    return sorted(line.rsplit("/", 1)[-1] for line in listing.split())


def reported(boot: Boot) -> dict[str, Any]:
    assert boot.report is not None, boot.explain()
    return boot.report


def next_version_bundle(built: Built, out: Path) -> Path:
    """The next version's bundle, made with the project's release tool
    (``anklume-bundle create``) from the slot the build made: the same
    squashfs and its UKI, signed as version 1.0.1.

    A fair next version for what this test proves: the updater's whole path
    is the same as for a rebuilt system -- the manifest is newer, signed by
    the image's key, with its own salt and so its own verity tree and root
    hash; the squashfs is downloaded, written to slot B and read back
    against them; the UKI it carries is checked against the manifest and put
    on the ESP as slot B's kernel -- and the boot that follows can only run
    from slot B and B's UKI (PERSIST, boot.env, the stub's own path say
    which). A second image build would cost minutes to change bytes no step
    here looks at."""
    built_bundle = built.image.with_name(built.image.name + ".bundle")
    manifest = parse_manifest(next(built_bundle.glob("*.manifest")).read_bytes())
    squashfs = built_bundle / manifest.image
    uki = out / "uki.efi"
    with uki.open("wb") as f:
        subprocess.run(["unsquashfs", "-cat", str(squashfs), UKI_IN_IMAGE], stdout=f,
                       check=True)
    tool = Path(sys.executable).with_name("anklume-bundle")
    subprocess.run([str(tool), "create", str(squashfs), "--version", NEXT_VERSION,
                    "--compatible", manifest.compatible, "--sign", str(built.key),
                    "--uki", str(uki), "--out", str(out)], check=True, capture_output=True)
    uki.unlink()
    return next(out.glob(f"*-{NEXT_VERSION}.manifest"))


class Boots:
    """The machine's boots, each made when a test first needs it (in order)."""

    def __init__(self, built: Built):
        shutil.rmtree(MACHINES, ignore_errors=True)
        self.built = built
        self.machine = Machine(built.image, MACHINES / "machine", data_mib=DATA_MIB)
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
    def first(self) -> Boot:
        make = guest_script(MAKE_CONTAINER, TOKEN=self.token, ALIAS=IMAGE_ALIAS,
                            CONTAINER=CONTAINER, POOL="anklume")
        self.machine.choose_entry_once(STICK_ENTRY_A)
        return self.machine.boot(
            credentials={"anklume-data-disk": DATA_DISK.encode(),
                         "anklume-data-passphrase": PASSPHRASE},
            commands={"make_container": make, **self.container_checks(),
                      "kernel_log": ["dmesg"], "sha256_drivers": SHA256_DRIVERS},
            settle=DATA_UNITS, wait=BOOT_WAIT, timeout=BOOT_WAIT * 3)

    @functools.cached_property
    def persist_after_first(self) -> dict[str, str]:
        assert self.first.powered_off, self.first.explain()
        return persist_files(self.machine, "first")

    @functools.cached_property
    def esp_after_first(self) -> list[str]:
        assert self.first.powered_off, self.first.explain()
        return esp_entries(self.machine, "first")

    @functools.cached_property
    def next_manifest(self) -> Path:
        out = self.machine.rundir / "next"
        out.mkdir()
        return next_version_bundle(self.built, out)

    @functools.cached_property
    def unlock(self) -> Boot:
        """Unlocked at boot, then updated to the next version from the host."""
        self.persist_after_first  # noqa: B018 -- the boots run in this order
        self.esp_after_first  # noqa: B018
        self.machine.choose_entry_once(STICK_ENTRY_A)
        with serving(self.next_manifest.parent) as server:
            url = f"http://{HOST_FROM_GUEST}:{server_port(server)}/{self.next_manifest.name}"
            return self.machine.boot(
                credentials={"anklume-data-passphrase": PASSPHRASE},
                commands={**self.container_checks(),
                          "network_up": guest_script(NETWORK_UP, ADDRESS=GUEST_ADDRESS),
                          "update": ["anklumectl", "update", url],
                          "status_after_update": ["anklumectl", "status", "--json"]},
                settle=DATA_UNITS, wait=BOOT_WAIT, network=True,
                timeout=BOOT_WAIT * 3 + UPDATE_WAIT)

    @functools.cached_property
    def persist_after_update(self) -> dict[str, str]:
        assert self.unlock.powered_off, self.unlock.explain()
        return persist_files(self.machine, "update")

    @functools.cached_property
    def on_b(self) -> Boot:
        self.persist_after_update  # noqa: B018 -- the boots run in this order
        pull = guest_script(PULL, REQUEST=PULL_STICK, PORT=CONTROL_PORT,
                            SECONDS=f"{scaled(PULL_WAIT):.0f}")
        return self.machine.boot(
            credentials={"anklume-data-passphrase": PASSPHRASE},
            commands={**self.container_checks(), "stub_image": STUB_IMAGE,
                      "pull_stick": pull,
                      "status_after_pull": ["anklumectl", "status", "--json"],
                      "containers_after_pull": [*INCUS, "list", "--format", "json"],
                      "hello_after_pull": [*INCUS, "exec", CONTAINER, "--",
                                           "/bin/busybox", "cat", "/root/hello"]},
            settle=DATA_UNITS, wait=BOOT_WAIT, unplug_on_request=True,
            timeout=BOOT_WAIT * 3 + PULL_WAIT)

    @functools.cached_property
    def persist_after_b(self) -> dict[str, str]:
        assert self.on_b.powered_off, self.on_b.explain()
        return persist_files(self.machine, "b")

    @functools.cached_property
    def esp_after_b(self) -> list[str]:
        assert self.on_b.powered_off, self.on_b.explain()
        return esp_entries(self.machine, "b")


def server_port(server: BundleServer) -> int:
    port: int = server.server_address[1]
    return port


@pytest.fixture(scope="module")
def boots(built: Built) -> Iterator[Boots]:
    yield Boots(built)


def unit(report: dict[str, Any], name: str) -> dict[str, str]:
    state: dict[str, str] = report["units"][name]
    return state


def command(report: dict[str, Any], name: str) -> dict[str, Any]:
    result: dict[str, Any] = report["commands"][name]
    return result


def json_output(report: dict[str, Any], name: str) -> Any:
    result = command(report, name)
    assert result["rc"] == 0, result
    return json.loads(result["stdout"])


def container(report: dict[str, Any], listing: str = "containers") -> dict[str, Any]:
    found = [c for c in json_output(report, listing) if c["name"] == CONTAINER]
    assert found, command(report, listing)
    state: dict[str, Any] = found[0]
    return state


def assert_incus_state_on_the_data_disk(report: dict[str, Any]) -> None:
    mounts = json_output(report, "incus_state")["filesystems"]
    assert mounts and "anklume-data" in mounts[0]["source"], mounts


def assert_the_container_and_its_file_are_there(report: dict[str, Any], token: str) -> None:
    assert_incus_state_on_the_data_disk(report)
    assert command(report, "wait_for_file")["rc"] == 0, command(report, "wait_for_file")
    probe = container(report)
    assert probe["status"] == "Running", probe  # boot.autostart: started by Incus itself
    hello = command(report, "hello")
    assert hello["stdout"] == f"written by the container: {token}\n", hello


# ---- 1. the first boot --------------------------------------------------------

def test_first_boot_runs_slot_a_from_the_stick_verified_and_is_marked_good(
        boots: Boots) -> None:
    report = reported(boots.first)
    env = report["boot_env"]
    assert env is not None, "the initramfs wrote no hand-off"
    assert (env["SLOT"], env["VERITY"], env["TORAM"], env["ROLLBACK"]) == \
        ("A", "signed", "0", "0"), env
    assert report["entry_selected"] == STICK_ENTRY_A, report["entry_selected"]
    assert "boot=anklume" in report["cmdline"] and "anklume.toram=0" in report["cmdline"]
    assert "org.anklume.Live1" in report["bus_names"]
    assert unit(report, "anklumed.service")["ActiveState"] == "active"
    assert unit(report, "anklume-boot-check.service")["Result"] == "success"
    assert unit(report, "boot-complete.target")["ActiveState"] == "active", report["jobs"]
    assert report["failed"] == [], report["errors"]
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["BootState"], status["BootCount"]) == ("A", "good", 0)
    # / reads the stick: it must stay (the third boot runs from RAM)
    assert (status["RootInRam"], status["SafeToRemove"]) == ("no", False), status
    assert boots.first.powered_off, "the report unit's poweroff did not end QEMU"


def verity_hash_driver(kernel_log: str) -> str:
    found = re.search(r'verity: sha256 using \w+ "([^"]+)"', kernel_log)
    assert found, "the kernel log names no hash implementation for dm-verity"
    return found.group(1)


def fastest_sha256(proc_crypto: str) -> str:
    """The driver of the highest-priority "sha256" in /proc/crypto, which is
    the one the kernel hands to whoever asks for "sha256"."""
    best = (-1, "")
    for block in proc_crypto.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        if fields.get("name") == "sha256" and fields.get("type") == "shash":
            best = max(best, (int(fields["priority"]), fields["driver"]))
    assert best[1], "no sha256 in /proc/crypto"
    return best[1]


def test_dm_verity_hashes_with_the_cpus_own_sha256(boots: Boots) -> None:
    """dm-verity binds the fastest SHA-256 loaded when the mapping opens and
    keeps it for the session: the initramfs must load the CPU's own (QEMU's
    "max" CPU has SHA-NI) before, or every block read is hashed by the
    generic C code."""
    report = reported(boots.first)
    verity = verity_hash_driver(command(report, "kernel_log")["stdout"])
    fastest = fastest_sha256(command(report, "sha256_drivers")["stdout"])
    assert fastest != "sha256-generic", "the guest's kernel offers no faster SHA-256"
    assert verity == fastest, (verity, fastest)


def test_the_initramfs_loads_the_boots_modules_early(boots: Boots) -> None:
    """initramfs-tools' init-top script starts the boot's modules in the
    background, before udev finds the stick (anklume-boot.sh, load_modules):
    its step is in the kernel log (whether it saves time is bench.image_boot's
    to say: README, "Measurements")."""
    kernel_log = command(reported(boots.first), "kernel_log")["stdout"]
    steps = re.findall(r"anklume-step: (.+)", kernel_log)
    assert "modules loaded early (in the background)" in steps, steps


def test_no_boot_redoes_what_the_build_did(boots: Boots) -> None:
    """The image's /etc and /var are marked as updated for its /usr: the
    units that rebuild caches after an update of /usr (ConditionNeedsUpdate=)
    are skipped, as on an installed system's second boot -- though every
    boot of the live system starts from the slot's /etc and /var."""
    report = reported(boots.first)
    for name in ("ldconfig.service", "systemd-journal-catalog-update.service"):
        assert unit(report, name)["ConditionResult"] == "no", (name, unit(report, name))


def test_first_boot_leaves_boot_count_zero_on_persist(boots: Boots) -> None:
    files = boots.persist_after_first
    assert files["boot-count"].strip() == "0", files


def test_a_boot_from_the_stick_entry_leaves_the_menu_as_built(boots: Boots) -> None:
    """That entry has no counter: systemd-boot renames nothing, and a good
    boot from it keeps the menu PERSIST implies (docs/boot-chain.md)."""
    report = reported(boots.first)
    assert "anklume.kernel=A" in report["cmdline"]
    assert report["boot_count_path"] is None, report["boot_count_path"]
    assert boots.esp_after_first == BUILT_MENU, boots.esp_after_first


def assert_the_first_boot_set_up_the_data_disk(report: dict[str, Any], machine: Machine,
                                               backend: str) -> None:
    """The first-boot unit made the machine's data disk LUKS2 with the pool
    ``anklume`` on ``backend``, mounted."""
    assert unit(report, "anklume-first-boot.service")["Result"] == "success", \
        report["anklume_journal"]
    data = report["data"]
    assert data is not None, report["data_raw"]
    assert (data["State"], data["Pool"], data["Encryption"], data["Backend"]) == \
        ("mounted", "anklume", "luks2", backend), data
    luks = subprocess.run(["cryptsetup", "isLuks", "--type", "luks2", str(machine.data)],
                          check=False)
    assert luks.returncode == 0, "the data disk carries no LUKS2 header"


def test_first_boot_sets_up_the_luks2_data_disk_from_credentials(boots: Boots) -> None:
    report = reported(boots.first)
    assert_the_first_boot_set_up_the_data_disk(report, boots.machine, "btrfs")
    assert "pool.conf" in boots.persist_after_first
    assert unit(report, "boot-complete.target")["ActiveState"] == "active"
    assert report["failed"] == [], report["errors"]


def test_first_boot_incus_runs_on_the_data_disk_and_a_local_container_writes(
        boots: Boots) -> None:
    report = reported(boots.first)
    assert unit(report, "anklume-incus-pool.service")["Result"] == "success", \
        report["anklume_journal"]
    assert unit(report, "incus.service")["ActiveState"] == "active", report["anklume_journal"]
    assert_incus_state_on_the_data_disk(report)
    pools = {p["name"]: p for p in json_output(report, "pools")}
    assert pools["anklume"]["driver"] == "btrfs", pools
    assert pools["anklume"]["config"]["source"] == "/mnt/anklume-data/incus", pools
    made = command(report, "make_container")
    assert made["rc"] == 0, made
    assert_the_container_and_its_file_are_there(report, boots.token)
    probe = container(report)
    assert probe["expanded_devices"]["root"]["pool"] == "anklume", probe


# ---- 2. the next boot: unlocked, then updated -------------------------------

def test_the_next_boot_unlocks_the_disk_and_the_container_and_its_file_are_there(
        boots: Boots) -> None:
    report = reported(boots.unlock)
    assert unit(report, "anklume-first-boot.service")["ActiveState"] == "inactive", \
        "the first-boot unit ran again"
    assert unit(report, "anklume-data-mount.service")["Result"] == "success", \
        report["anklume_journal"]
    assert report["failed"] == [], report["errors"]
    assert_the_container_and_its_file_are_there(report, boots.token)


def test_the_next_boot_status_says_slot_a_good_count_zero_and_the_pool(boots: Boots) -> None:
    report = reported(boots.unlock)
    status = report["status"]  # gathered before the update
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["BootState"], status["BootCount"]) == ("A", "good", 0)
    data = status["Data"]
    assert (data["State"], data["Pool"], data["Encryption"]) == \
        ("mounted", "anklume", "luks2"), data


def test_anklumectl_update_url_installs_the_next_version_in_slot_b(boots: Boots) -> None:
    """The next version's bundle over HTTP from the host (QEMU user
    networking), written to slot B by the running system; slot B becomes
    primary for the next boot."""
    report = reported(boots.unlock)
    assert command(report, "network_up")["rc"] == 0, command(report, "network_up")
    update = command(report, "update")
    assert update["rc"] == 0, update
    after = json_output(report, "status_after_update")
    slot_b = after["Slots"]["B"]
    assert (slot_b["Status"], slot_b["Version"], slot_b["Primary"]) == \
        ("ok", NEXT_VERSION, True), slot_b
    manifest = parse_manifest(boots.next_manifest.read_bytes())
    assert slot_b["RootHash"] == manifest.root_hash, slot_b
    # The updater's kernel check let it through: 1.0.1's UKI is the built
    # slot's, signed with the session's test key as the running one is.
    assert manifest.uki is not None
    new_kernel = slot_signers(boots.next_manifest.with_name(manifest.image), manifest.uki)
    assert [c.subject.rfc4514_string() for c in new_kernel] == ["CN=anklume test db"]
    assert after["PrimarySlot"] == "B", after
    files = boots.persist_after_update
    assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("B", "0"), files


# ---- 3. the boot after the update: slot B ----------------------------------------

def test_after_the_update_the_machine_boots_slot_b_with_its_own_kernel(boots: Boots) -> None:
    report = reported(boots.on_b)
    env = report["boot_env"]
    assert env is not None, "the initramfs wrote no hand-off"
    assert (env["SLOT"], env["VERITY"], env["ROLLBACK"]) == ("B", "signed", "0"), env
    assert "anklume.kernel=B" in report["cmdline"], report["cmdline"]
    stub = command(report, "stub_image")
    assert stub["stdout"].strip().lower().endswith("\\efi\\anklume\\slot-b.efi"), stub
    assert report["failed"] == [], report["errors"]


def test_the_boot_loader_counted_bs_default_entry_and_the_good_boot_renewed_it(
        boots: Boots) -> None:
    """The update made B's entry the default, with three tries; systemd-boot
    renamed it +3-0 -> +2-1 before it started B's UKI (docs/boot-chain.md);
    marking the boot good put a fresh +3-0 back on the ESP. Slot A, still
    ok, is where the boot loader would fall back."""
    report = reported(boots.on_b)
    assert (report["entry_selected"] or "").startswith("anklume-1-live-b"), report
    assert (report["boot_count_path"] or "").endswith("anklume-1-live-b+2-1.conf"), report
    assert boots.esp_after_b == ["anklume-1-live-b+3-0.conf", "anklume-2-slot-a.conf",
                                 "anklume-3-stick-b.conf", "anklume-4-slot-b.conf"], \
        boots.esp_after_b


def test_slot_b_is_marked_good_and_status_says_b(boots: Boots) -> None:
    report = reported(boots.on_b)
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["BootState"], status["MarkedGood"]) == \
        ("B", "good", True), status
    assert status["Slots"]["B"]["Version"] == NEXT_VERSION, status["Slots"]["B"]
    files = boots.persist_after_b
    assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("B", "0"), files


def test_after_the_update_the_container_and_its_file_are_still_there(boots: Boots) -> None:
    report = reported(boots.on_b)
    assert unit(report, "anklume-data-mount.service")["Result"] == "success", \
        report["anklume_journal"]
    assert_the_container_and_its_file_are_there(report, boots.token)


def test_the_stick_pulled_from_the_os_in_ram_the_container_keeps_running(
        boots: Boots) -> None:
    """toram: the stick pulled (QMP ``device_del``) after anklumed said it
    was safe to remove; the system and the container carry on from RAM."""
    report = reported(boots.on_b)
    before = report["status"]
    assert before is not None, report["status_raw"]
    assert (before["Toram"], before["RootInRam"], before["BootMediaPresent"],
            before["SafeToRemove"]) == ("yes", "yes", True, True), before
    assert (boots.on_b.rundir / "pulled").read_text() == "pulled\n"
    assert command(report, "pull_stick")["rc"] == 0, command(report, "pull_stick")
    after = json_output(report, "status_after_pull")
    assert (after["BootMediaPresent"], after["SafeToRemove"], after["BootedSlot"]) == \
        (False, True, "B"), after
    assert container(report, "containers_after_pull")["status"] == "Running"
    hello = command(report, "hello_after_pull")
    assert hello["stdout"] == f"written by the container: {boots.token}\n", hello


def assert_the_passphrase_is_in_no_log(*boots: Boot) -> None:
    for boot in boots:
        assert PASSPHRASE.decode() not in boot.console
        report = reported(boot)
        logs = report["errors"] + report["anklume_journal"]
        assert PASSPHRASE.decode() not in "\n".join(logs)


def test_the_passphrase_is_in_no_log(boots: Boots) -> None:
    assert_the_passphrase_is_in_no_log(boots.first, boots.unlock, boots.on_b)
