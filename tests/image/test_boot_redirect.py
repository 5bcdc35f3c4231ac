"""The redirect, on the built image under OVMF (docs/boot-chain.md, "The redirect").

Slot B is installed on the stick from the build's own bundle with the
updater's own steps (the image written to ANKLUME-OS-B, its tree, its UKI on
the ESP checked against the manifest, then ``activate``: PERSIST names B),
on the host between two boots -- as ``anklume-bundle`` would from another
computer, and quicker than an update inside TCG. The boot menu is left as
it was before the primary changed (A's default entry, B's ``anklume-2``
entry): the state a power cut leaves between PERSIST's write and the
ESP's. So the default entry starts slot A's kernel while PERSIST decides B.

The first QEMU process must end by itself (the initramfs restarts the
machine; QEMU runs with -no-reboot), having counted the attempt and
recorded the redirect on PERSIST; the second, with the same firmware
variables, must be slot B's own UKI (the entry systemd-boot was asked for),
with the attempt counted once.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from anklume_image import stick
from anklumed.persist import PersistDir
from anklumed.slots import boot_entries
from anklumed.slots.bundle import KeptManifest, Manifest, parse_manifest
from anklumed.slots.esp import Esp
from anklumed.slots.update import activate, install_kernel
from anklumed.slots.verity_tree import VerityHasher
from anklumed.stick import SlotName
from devtools.image_vm import STUB_IMAGE, Boot, Machine
from tests.image.conftest import Built
from tests.image.test_boot_image import DATA_MIB, persist_files, reported
from tests.image.test_build import extract, sh

pytestmark = pytest.mark.image
MACHINES = Path("/var/tmp/anklume-image-redirect")
CHUNK = 4 * 1024 * 1024


def put_back(image: Path, number: int, part: Path) -> None:
    """A partition's image written back at its place on the stick."""
    start = stick.partition_starts(image)[number] * stick.SECTOR
    with part.open("rb") as src, image.open("r+b") as dst:
        dst.seek(start)
        while chunk := src.read(CHUNK):
            dst.write(chunk)


def write_slot(image: Path, squashfs: Path, manifest: Manifest) -> bytes:
    """The slot's bytes at ANKLUME-OS-B and their dm-verity tree (the updater's
    pass: the root hash must be the manifest's)."""
    hasher = VerityHasher(manifest.verity_params())
    start = stick.partition_starts(image)[3] * stick.SECTOR
    with squashfs.open("rb") as src, image.open("r+b") as dst:
        dst.seek(start)
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            hasher.update(chunk)
    hasher.update(bytes(manifest.padded_size - manifest.size))
    result = hasher.finish()
    assert result.root_hash == manifest.root_hash
    return result.tree


def persist_partuuid(image: Path) -> str:
    return sh("sgdisk", "-i", "4", image).split("Partition unique GUID: ")[1].split()[0].lower()


def install_slot_b(machine: Machine, built: Built) -> None:
    bundle_dir = built.image.with_name(built.image.name + ".bundle")
    manifest_file = next(bundle_dir.glob("*.manifest"))
    manifest = parse_manifest(manifest_file.read_bytes())
    squashfs = bundle_dir / manifest.image
    tree = write_slot(machine.stick, squashfs, manifest)
    # The kernel phase: B's UKI to the ESP, read back against UKI_SHA256.
    esp_file = extract(machine.stick, 1, machine.rundir / "esp.img")
    esp = Esp(esp_file)
    install_kernel(esp, squashfs, SlotName.B, manifest)
    # The menu of primary A with B ok: what it was before activation's
    # rewrite (B's kernel reachable through its own entry only).
    wanted = boot_entries.wanted_entries(SlotName.A, {SlotName.A, SlotName.B},
                                         3, persist_partuuid(machine.stick))
    esp.apply(boot_entries.plan(esp.entries(), wanted, keep_counter=True))
    put_back(machine.stick, 1, esp_file)
    esp_file.unlink()
    # Activation: tree, manifest, signature, meta ok, boot-count 0, ab-state B.
    part = extract(machine.stick, 4, machine.rundir / "persist.img")
    mnt = machine.rundir / "persist-mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(part), str(mnt)], check=True)
    try:
        activate(PersistDir(mnt), SlotName.B, manifest, KeptManifest.beside(manifest_file),
                 tree, "test: the build's bundle", datetime.now(UTC))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    put_back(machine.stick, 4, part)
    part.unlink()


def esp_entries(machine: Machine, name: str) -> list[str]:
    esp = extract(machine.stick, 1, machine.rundir / f"esp-{name}.img")
    try:
        return sorted(Esp(esp).entries())
    finally:
        esp.unlink()


@dataclass
class Redirect:
    machine: Machine
    menu_before: list[str]
    restart: Boot               # the boot on A's kernel that restarts
    persist_between: dict[str, str]
    landed: Boot                # the boot that follows, on B's own kernel
    persist_after: dict[str, str]
    menu_after: list[str]


@pytest.fixture(scope="module")
def redirect(built: Built) -> Iterator[Redirect]:
    shutil.rmtree(MACHINES, ignore_errors=True)
    machine = Machine(built.image, MACHINES / "machine", data_mib=DATA_MIB)
    install_slot_b(machine, built)
    menu_before = esp_entries(machine, "before")
    # A restart goes through the initramfs only: far less than a whole boot.
    restart = machine.boot(timeout=300)
    between = persist_files(machine, "between")
    landed = machine.boot(commands={"stub_image": STUB_IMAGE})
    after = persist_files(machine, "after")
    yield Redirect(machine, menu_before, restart, between, landed, after,
                   esp_entries(machine, "after"))


def test_the_stick_starts_on_slot_as_kernel_with_persist_naming_b(redirect: Redirect) -> None:
    assert redirect.menu_before == ["anklume-1-live-a+3-0.conf", "anklume-2-slot-b.conf",
                                    "anklume-3-stick-a.conf", "anklume-4-slot-a.conf"]


def test_the_boot_on_the_other_slots_kernel_restarts_at_once(redirect: Redirect) -> None:
    """No system ran on A's kernel: the machine restarted from the initramfs,
    after counting the attempt and recording the decision on PERSIST."""
    restart = redirect.restart
    assert restart.report is None and restart.powered_off and not restart.timed_out, \
        restart.explain()
    files = redirect.persist_between
    assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("B", "1"), files
    assert files.get("redirect", "").splitlines() == [
        "SLOT=B", "AB_STATE=B", "BOOT_COUNT=1", "ROLLBACK_REASON=", "DEGRADED=0"], files


def test_the_boot_that_follows_runs_slot_bs_own_kernel_counted_once(redirect: Redirect) -> None:
    report = reported(redirect.landed)
    env = report["boot_env"]
    assert (env["SLOT"], env["BOOT_COUNT"], env["ROLLBACK"], env["DEGRADED"]) == \
        ("B", "1", "0", "0"), env
    assert "anklume.kernel=B" in report["cmdline"], report["cmdline"]
    # systemd 257 keeps ".conf" in an entry's id; the specification drops it.
    assert (report["entry_selected"] or "").removesuffix(".conf") == "anklume-2-slot-b", report
    stub = report["commands"]["stub_image"]
    assert stub["stdout"].strip().lower().endswith("\\efi\\anklume\\slot-b.efi"), stub
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["BootState"]) == ("B", "good"), status
    assert "kernel-of-other-slot" not in status["ProblemCodes"], status["Problems"]
    assert report["failed"] == [], report["errors"]


def test_after_the_good_boot_persist_and_the_menu_agree(redirect: Redirect) -> None:
    files = redirect.persist_after
    assert "redirect" not in files, "the redirect was left for another boot"
    assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("B", "0"), files
    assert redirect.menu_after == ["anklume-1-live-b+3-0.conf", "anklume-2-slot-a.conf",
                                   "anklume-3-stick-b.conf", "anklume-4-slot-b.conf"]
