"""Secure Boot, end to end: the session's image (signed with its test key,
tests/image/conftest.py) under the OVMF build that enforces Secure Boot,
with that key enrolled as PK, KEK and db in a copy of OVMF's variable store
(virt-fw-vars) and no Microsoft key.

- the signed stick boots (its "run from the stick" entry, chosen once: the
  copy to RAM is test_boot_image.py's): the booted system reports Secure
  Boot on and in user mode (the firmware's own variables), the slot
  verified by its signed manifest, the boot marked good; and that with the
  entry's options edited on the ESP before the boot (a shell as init, the
  manifest keys' directory moved, another stick's PERSIST, slot B's kernel
  named): systemd-stub boots the signed UKI's own command line (the
  entry's profile's), so the same verified system comes up (one boot for
  both: a boot under TCG costs minutes); at the end of that boot,
  ``anklumectl update URL`` of a bundle whose manifest the image's key
  signed but whose UKI another key signed is refused by the updater's
  kernel check, which reads the firmware's db (slot B failed, no kernel on
  the ESP, slot A still the next boot);
- then the next version (1.0.1, its UKI signed by the enrolled key)
  installed in slot B from the host with the updater's steps
  (tests/image/slot_install.py), and the next boot, the firmware still
  enforcing Secure Boot, runs slot B on B's own UKI, marked good;
- the same stick with its UKI unsigned is refused by the firmware: the
  signed systemd-boot runs (it counts the default entry on the ESP) but its
  UKI never starts (no report, PERSIST untouched), and
  systemd-boot says the firmware's status (Debian 12's OVMF: access denied).

Each machine is its own copy of the stick and of the variable store, so
the other image tests never see these boots.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anklume_image import stick
from anklume_image.build import sha256_file
from anklumectl.main import EXIT_CODES
from anklumed.slots import boot_entries, bundle
from anklumed.slots.bundle import parse_manifest
from anklumed.stick import EFI_LABEL, SlotName
from devtools.bundle_server import serving
from devtools.image_vm import (
    GUEST_ADDRESS,
    HOST_FROM_GUEST,
    OVMF_CODE_SECURE,
    OVMF_VARS,
    STUB_IMAGE,
    Boot,
    Machine,
)
from devtools.stickimg import make_squashfs
from tests.image.conftest import Built
from tests.image.slot_install import install_slot_b, signed_again
from tests.image.test_boot_image import (
    DATA_MIB,
    NETWORK_UP,
    NEXT_VERSION,
    STICK_ENTRY_A,
    UPDATE_WAIT,
    command,
    guest_script,
    json_output,
    next_version_bundle,
    reported,
    server_port,
    unit,
)
from tests.image.test_build import extract

pytestmark = pytest.mark.image
MACHINES = Path("/var/tmp/anklume-image-secure-boot")
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"  # the UEFI specification's variables
OWNER = "5c3b8f0e-7a4d-4f6b-9d7e-2a1c0b9e4f11"  # the test key's owner GUID (any GUID)
# The firmware's refusal as systemd-boot prints it: EFI_SECURITY_VIOLATION
# (edk2's answer for an image no db entry vouches for), or EFI_ACCESS_DENIED.
REFUSALS = ("security violation", "access denied")
# What the updater's kernel check (anklumed/slots/kernel_signer.py) reads on
# a real firmware: Secure Boot's state, the db's certificates, and the running
# UKI's signers, on Debian 13's python3-cryptography.
KERNEL_SIGNER = """
import json
from anklumed.slots import kernel_signer as ks
machine = ks.Machine()
print(json.dumps({
    "secure_boot": ks.secure_boot_on(machine.efivars),
    "db": [c.subject.rfc4514_string() for c in ks.db_certificates(machine.efivars)],
    "running": [c.subject.rfc4514_string() for c in ks.file_signers(machine.running_uki)],
}))
"""


# An update the signed boot refuses: a bundle whose UKI another key signed.
OTHER_VERSION = "1.0.2"
OTHER_SIGNER = "CN=anklume other key"
# The boot after the next version's install: slot B from its "run from the
# stick" entry, chosen once. The default entry's copy to RAM and
# systemd-boot's counter are test_boot_image.py's third boot's subject; the
# UKI is the same file.
STICK_ENTRY_B = "anklume-3-stick-b.conf"
STATUS = ["anklumectl", "status", "--json"]
# The kernels on the ESP, read in the guest as the updater reads the ESP
# (mtools on the partition, nothing mounted).
KERNELS_ON_THE_ESP = ["sh", "-c", "MTOOLS_SKIP_CHECK=1 mdir -b -i "
                      f"/dev/disk/by-partlabel/{EFI_LABEL} ::/{boot_entries.UKI_DIR}"]


def efi_variable(name: str) -> list[str]:
    """The report's command for one firmware variable: its bytes as numbers
    (four of attributes, then the value)."""
    return ["od", "-An", "-tu1", f"/sys/firmware/efi/efivars/{name}-{EFI_GLOBAL}"]


def value_of(report_command: dict[str, object]) -> int:
    assert report_command["rc"] == 0, report_command
    return int(str(report_command["stdout"]).split()[-1])


def enrolled_vars(cert: Path, out: Path) -> Path:
    """OVMF's empty variable store with the test certificate as PK, KEK and
    db, and Secure Boot on: a machine whose owner enrolled anklume's key."""
    tool = Path(sys.executable).with_name("virt-fw-vars")
    subprocess.run([tool, "--input", OVMF_VARS, "--output", out, "--no-microsoft",
                    "--set-pk", OWNER, cert, "--add-kek", OWNER, cert, "--add-db", OWNER, cert,
                    "--sb"], check=True, capture_output=True)
    return out


def esp_offset(image: Path) -> int:
    return stick.partition_starts(image)[1] * stick.SECTOR


def unsign_uki(image: Path, work: Path) -> None:
    """Slot A's UKI on the stick's ESP replaced by the same UKI without its
    signature (sbattach --remove): only the signature differs."""
    target = f"::/{boot_entries.uki_path(SlotName.A)}"
    fat = f"{image}@@{esp_offset(image)}"
    uki = work / "slot-a.efi"
    subprocess.run(["mcopy", "-n", "-i", fat, target, uki], check=True)
    subprocess.run(["sbattach", "--remove", uki], check=True, capture_output=True)
    subprocess.run(["mcopy", "-o", "-i", fat, uki, target], check=True)


def esp_entries(machine: Machine) -> list[str]:
    listing = subprocess.run(["mdir", "-i", f"{machine.stick}@@{esp_offset(machine.stick)}",
                              "-b", f"::/{boot_entries.ENTRIES_DIR}"],
                             check=True, capture_output=True, text=True).stdout
    return sorted(line.rsplit("/", 1)[-1] for line in listing.split())


# What someone who can write the ESP adds to an entry: each word would take
# the boot away from the verified system, were it passed to the kernel.
INJECTED = ("init=/bin/sh ANKLUME_KEYS=/nowhere anklume.kernel=B "
            "anklume.persist=PARTUUID=00000000-0000-4000-8000-000000000000")


def edit_entry(image: Path, name: str, added: str) -> None:
    """The entry ``name``'s options with ``added`` at their end, on the stick's ESP."""
    fat = f"{image}@@{esp_offset(image)}"
    target = f"::/{boot_entries.ENTRIES_DIR}/{name}"
    text = subprocess.run(["mtype", "-i", fat, target], check=True, capture_output=True,
                          text=True).stdout
    edited = "".join(line + (f" {added}" if line.startswith("options ") else "") + "\n"
                     for line in text.splitlines())
    assert edited != text
    subprocess.run(["mcopy", "-o", "-i", fat, "-", target], input=edited.encode(), check=True)


def other_key_bundle(built: Built, out: Path) -> Path:
    """A bundle the image's key signed (anklumed trusts its manifest) whose
    UKI another Secure Boot key signed: the built UKI signed again by a key
    made here, which the firmware's db does not hold -- a bundle built with
    another ``--secure-boot-key``. Its squashfs holds only that UKI, where a
    slot holds it: the updater's kernel check reads nothing else, and the
    guest writes 50 MiB before the refusal rather than 500."""
    key, cert = out / "other.key", out / "other.crt"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "30", "-subj", f"/{OTHER_SIGNER}/", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    built_bundle = built.image.with_name(built.image.name + ".bundle")
    manifest = parse_manifest(next(built_bundle.glob("*.manifest")).read_bytes())
    uki = subprocess.run(["unsquashfs", "-cat", built_bundle / manifest.image,
                          boot_entries.UKI_IN_IMAGE], check=True, capture_output=True).stdout
    resigned = out / "other-uki.efi"
    resigned.write_bytes(signed_again(uki, out, key, cert))
    image = make_squashfs(out / "other-key.squashfs", OTHER_VERSION,
                          uki=resigned.read_bytes())
    made = bundle.create_bundle(image, out, version=OTHER_VERSION,
                                compatible=manifest.compatible, signing_key=built.key,
                                uki=(boot_entries.UKI_IN_IMAGE, resigned))
    image.unlink()
    resigned.unlink()
    return out / made.image.replace(".squashfs", ".manifest")


def refused(bootdir: Path) -> bool:
    console = bootdir / "console.log"
    text = console.read_text(errors="replace").lower() if console.exists() else ""
    return any(refusal in text for refusal in REFUSALS)


class SecureBoots:
    def __init__(self, built: Built):
        shutil.rmtree(MACHINES, ignore_errors=True)
        MACHINES.mkdir(parents=True)
        self.built = built
        self.vars = enrolled_vars(built.secure_boot_cert, MACHINES / "OVMF_VARS.enrolled.fd")

    def machine(self, name: str) -> Machine:
        return Machine(self.built.image, MACHINES / name, data_mib=DATA_MIB,
                       vars_template=self.vars, secure_boot=True)

    @functools.cached_property
    def signed_machine(self) -> Machine:
        return self.machine("signed")

    @functools.cached_property
    def manifests(self) -> dict[str, Path]:
        """The bundles, in one folder: the next version's
        (test_boot_image.py's, its UKI the built one, signed by the enrolled
        key) and one whose UKI another key signed."""
        out = MACHINES / "bundles"
        out.mkdir()
        return {"next": next_version_bundle(self.built, out),
                "other_key": other_key_bundle(self.built, out)}

    @functools.cached_property
    def signed(self) -> Boot:
        """The signed stick's boot from its "run from the stick" entry (the
        copy to RAM, a minute or more under TCG, is test_boot_image.py's
        third boot's subject), that entry's options edited first; once it
        is reported good, an update over QEMU's user networking that the
        kernel check refuses."""
        machine = self.signed_machine
        machine.choose_entry_once(STICK_ENTRY_A)
        edit_entry(machine.stick, STICK_ENTRY_A, INJECTED)
        with serving(self.manifests["next"].parent) as server:
            def update(name: str) -> list[str]:
                url = f"http://{HOST_FROM_GUEST}:{server_port(server)}/{self.manifests[name].name}"
                return ["anklumectl", "update", url]

            # No test here looks at the poweroff (test_boot_image.py's boots
            # do): the power is cut once the report is in.
            return machine.boot(commands={
                "secure_boot": efi_variable("SecureBoot"),
                "setup_mode": efi_variable("SetupMode"),
                "kernel_signer": ["python3", "-c", KERNEL_SIGNER],
                "cmdline": ["cat", "/proc/cmdline"],
                "network_up": guest_script(NETWORK_UP, ADDRESS=GUEST_ADDRESS),
                "update_other_key": update("other_key"),
                "status_after_refusal": STATUS,
                "kernels_after_refusal": KERNELS_ON_THE_ESP}, network=True,
                cut_after_report=True, timeout=600.0 + UPDATE_WAIT)

    @functools.cached_property
    def on_b(self) -> Boot:
        """The next version installed in slot B from the host after the
        signed boot (tests/image/slot_install.py: the updater's own steps,
        B's UKI to the ESP and the menu for B; the same install through
        ``anklumectl update`` in the guest is test_boot_image.py's, and
        would cost this tier another minute under TCG), then the boot on it,
        the same firmware enforcing Secure Boot: slot B from its "run from
        the stick" entry, chosen once."""
        reported(self.signed)  # its refused update wrote slot B first
        machine = self.signed_machine
        install_slot_b(machine, self.built, self.manifests["next"])
        machine.choose_entry_once(STICK_ENTRY_B)
        return machine.boot(commands={
            "secure_boot": efi_variable("SecureBoot"), "setup_mode": efi_variable("SetupMode"),
            "kernel_signer": ["python3", "-c", KERNEL_SIGNER], "stub_image": STUB_IMAGE},
            cut_after_report=True)

    @functools.cached_property
    def unsigned(self) -> tuple[Machine, Boot]:
        machine = self.machine("unsigned")
        unsign_uki(machine.stick, machine.rundir)
        # Firmware and systemd-boot take well under a minute under TCG; the
        # refusal ends the boot as soon as systemd-boot reports it.
        return machine, machine.boot(timeout=240.0, stop_when=refused)


@pytest.fixture(scope="module")
def secure(built: Built) -> Iterator[SecureBoots]:
    if not OVMF_CODE_SECURE.exists():
        pytest.fail(f"{OVMF_CODE_SECURE} is missing: apt-get install ovmf (./setup-dev --tests)")
    yield SecureBoots(built)


def test_the_enrolled_store_trusts_the_test_key_and_no_microsoft_key(
        secure: SecureBoots) -> None:
    printed = subprocess.run([Path(sys.executable).with_name("virt-fw-vars"), "--input",
                              secure.vars, "--print", "--verbose"],
                             check=True, capture_output=True, text=True).stdout
    assert "anklume test db" in printed, printed
    assert "Microsoft" not in printed, printed


def test_the_signed_image_boots_with_secure_boot_enforced(secure: SecureBoots) -> None:
    report = reported(secure.signed)
    commands = report["commands"]
    assert value_of(commands["secure_boot"]) == 1, commands
    assert value_of(commands["setup_mode"]) == 0, commands  # user mode: db is enforced
    env = report["boot_env"]
    assert env is not None, "the initramfs wrote no hand-off"
    assert (env["SLOT"], env["VERITY"], env["TORAM"]) == ("A", "signed", "0"), env
    assert report["entry_selected"] == STICK_ENTRY_A, report["entry_selected"]
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["BootState"]) == ("A", "good"), status


def test_a_first_boot_with_nobody_at_the_keyboard_completes_while_the_wizard_waits(
        secure: SecureBoots) -> None:
    """This boot is a first boot with no credentials (the data disk's are
    test_boot_image.py's): the first-boot wizard waits for a person on
    tty1, and the boot is complete and marked good all the same."""
    report = reported(secure.signed)
    assert unit(report, "anklume-first-boot.service")["ActiveState"] == "activating"
    assert unit(report, "boot-complete.target")["ActiveState"] == "active", report["jobs"]
    assert report["failed"] == [], report["errors"]
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootState"], status["BootCount"]) == ("good", 0), status


def test_the_updater_reads_the_firmwares_db_and_the_running_kernels_signer(
        secure: SecureBoots) -> None:
    """What an update's kernel check compares a new UKI with, read off the
    real firmware and the real signed UKI (the rule is in the unit tier)."""
    read = reported(secure.signed)["commands"]["kernel_signer"]
    assert read["rc"] == 0, read
    assert json.loads(read["stdout"]) == {
        "secure_boot": True, "db": ["CN=anklume test db"], "running": ["CN=anklume test db"]}


def test_an_edited_entry_cannot_change_what_the_signed_kernel_boots(
        secure: SecureBoots) -> None:
    report = reported(secure.signed)
    cmdline = str(report["commands"]["cmdline"]["stdout"])
    # the chosen entry's profile (the UKI's own words), then the SMBIOS words
    # of the test machine
    # (the serial console: not the stick's, devtools/image_vm); none of the entry's
    stick = next(p for p in boot_entries.profiles() if p.options == "anklume.toram=0")
    assert cmdline.startswith(stick.cmdline + " console="), cmdline
    assert not any(word in cmdline for word in INJECTED.split()), cmdline
    env = report["boot_env"]
    assert env is not None, "the initramfs wrote no hand-off"
    assert (env["SLOT"], env["VERITY"], env["KERNEL"], env["SECURE_BOOT"]) == (
        "A", "signed", "A", "1"), env
    guid = subprocess.run(["sgdisk", "-i", "4", secure.built.image], check=True,
                          capture_output=True, text=True).stdout
    assert env["PERSIST_PARTUUID"] == guid.split("Partition unique GUID: ")[1].split()[0].lower()
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["BootState"]) == ("A", "good"), status


def file_names(listing: dict[str, Any]) -> list[str]:
    assert listing["rc"] == 0, listing
    return sorted(line.rsplit("/", 1)[-1] for line in str(listing["stdout"]).split())


def test_under_secure_boot_an_update_whose_kernel_another_key_signed_is_refused(
        secure: SecureBoots) -> None:
    """Its manifest is signed by the image's key, its UKI by a key the
    firmware's db does not hold: the firmware would refuse that kernel at
    every boot. The updater refuses the bundle after writing slot B (it
    reads the kernel out of the slot it wrote) and before the kernel
    reaches the ESP or PERSIST names B (anklumed/slots/kernel_signer.py)."""
    report = reported(secure.signed)
    assert command(report, "network_up")["rc"] == 0, command(report, "network_up")
    refusal = command(report, "update_other_key")
    assert refusal["rc"] == EXIT_CODES["VerificationFailed"], refusal
    assert (f"the bundle's kernel (UKI) is signed by {OTHER_SIGNER}: this machine starts "
            "with Secure Boot on, and its firmware would refuse it") in refusal["stderr"], refusal
    after = json_output(report, "status_after_refusal")
    assert (after["BootedSlot"], after["PrimarySlot"]) == ("A", "A"), after
    assert after["LastUpdate"]["error_code"] == "verification-failed", after["LastUpdate"]
    # B's old bytes are gone (it was empty): not bootable, not the next boot
    slot_b = after["Slots"]["B"]
    assert (slot_b["Status"], slot_b["Primary"]) == ("failed", False), slot_b
    assert file_names(command(report, "kernels_after_refusal")) == ["slot-a.efi"]


def test_after_the_update_slot_b_boots_on_its_own_uki_under_enforced_secure_boot(
        secure: SecureBoots) -> None:
    """The next boot, the firmware still enforcing db: systemd-stub started
    B's UKI from the ESP, the initramfs opened slot B by its signed
    manifest, and the boot was marked good; the running kernel's signer is
    the enrolled key."""
    report = reported(secure.on_b)
    commands = report["commands"]
    assert (value_of(commands["secure_boot"]), value_of(commands["setup_mode"])) == (1, 0)
    stub = command(report, "stub_image")
    assert stub["stdout"].strip().lower().endswith("\\efi\\anklume\\slot-b.efi"), stub
    env = report["boot_env"]
    assert env is not None, "the initramfs wrote no hand-off"
    assert (env["SLOT"], env["KERNEL"], env["VERITY"], env["SECURE_BOOT"]) == (
        "B", "B", "signed", "1"), env
    assert report["entry_selected"] == STICK_ENTRY_B, report["entry_selected"]
    assert json_output(report, "kernel_signer") == {
        "secure_boot": True, "db": ["CN=anklume test db"], "running": ["CN=anklume test db"]}
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["BootState"], status["MarkedGood"]) == \
        ("B", "good", True), status
    assert status["Slots"]["B"]["Version"] == NEXT_VERSION, status["Slots"]["B"]


def test_an_unsigned_uki_is_refused_by_the_firmware(secure: SecureBoots) -> None:
    machine, boot = secure.unsigned
    assert boot.report is None, "the unsigned UKI ran"
    # systemd-boot (signed) ran and counted the default entry before it asked
    # the firmware to load the UKI ...
    assert "anklume-1-live-a+2-1.conf" in esp_entries(machine), esp_entries(machine)
    # ... which never started: the initramfs did not write PERSIST (its first
    # write counts the boot), so the partition is as built, byte for byte.
    persist = [sha256_file(extract(image, 4, machine.rundir / f"persist-{name}.img"))
               for name, image in (("built", secure.built.image), ("after", machine.stick))]
    assert persist[0] == persist[1], "the initramfs ran and wrote PERSIST"
    assert refused(boot.rundir), boot.explain()
