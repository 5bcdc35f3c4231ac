"""Broken slots on the built image under OVMF: the failures of issue 14's
"tamper" and "broken update" caught as docs/boot-chain.md's table says, and
the stick back on the good slot with the reason on PERSIST and in
``anklumectl status``; with the tamper, the initramfs's redirect (docs/boot-
chain.md, "The redirect") on the real boot loader and firmware.

One machine for the file, its state carried from step to step (each step
starts on the stick the step before left, slot A booted after a rollback):

1. tamper -- slot B installed and primary, one byte of its data flipped:
   B's kernel finds B refused by dm-verity, falls through to A and restarts
   into A's own UKI, where the boot is counted once and marked good;
2. a B whose kernel panics, three times: systemd-boot's counter alone, then
   A's entry, and anklumed on A records the boot loader's rollback;
3. a B whose system runs but never reaches boot-complete.target (a health
   check that fails), three times: each boot counted by systemd-boot and by
   the initramfs on PERSIST, never marked good, anklumed's deadline armed;
   then A's entry, and anklumed on A records the rollback.

(Each step starts with slot B installed and activated again, so one that
failed leaves the next a stick it can use.)

Step 3's boots are ended by the host once the booted system has reported
(a power cut, what a person at a stuck machine does): anklumed's deadline,
which would reboot them, is 600 s of each boot by default, and the VM tier
proves it (tests/vm/test_boot_deadline.py: a boot held from
boot-complete.target rebooted at its deadline, still counted). Its failing
health check comes in as the test's report unit does, through SMBIOS
credentials: a unit boot-complete.target requires, which fails, as any
health check of an update could.

Before each step slot B is installed again from the build's bundle on the
host, with the updater's own steps (tests/image/slot_install.py), and then
broken on the stick; the breakage is made from the same image, no second
build. The menu's entries run the system from the stick, not from a copy in
RAM (slot_install.run_from_the_stick): the copy is not the subject here, and
under TCG it costs tens of seconds of each boot. Verdicts come from the
report the booted system writes and from PERSIST and the ESP read on the
host between boots, never from the console. A boot that fails ends by
itself: QEMU runs with -no-reboot, and the failed boots end in a restart
(the initramfs's redirect, or ``panic=10``). The boots that end a step are
cut once they have reported (what was written before survives a power cut
by design), step 2's as soon as anklumed answers (it has then recorded the
rollback and rewritten the menu).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from anklumed.slots import boot_entries
from anklumed.stick import SlotName
from devtools.image_vm import STUB_IMAGE, Boot, Machine
from tests.image.conftest import Built
from tests.image.slot_install import (
    SLOT_B,
    edit_esp_file,
    esp_entries,
    flip_byte,
    install_slot_b,
    read_esp_file,
    run_from_the_stick,
    signed_again,
    without_initrd,
)
from tests.image.test_boot_image import DATA_MIB, persist_files, reported

pytestmark = pytest.mark.image
MACHINES = Path("/var/tmp/anklume-image-broken")
# A byte of the squashfs's first 4 KiB block (not the superblock's 96 bytes
# themselves): dm-verity checks a whole block on any read of it, and
# mounting the squashfs reads its superblock.
TAMPERED_OFFSET = 3000
# A failed boot: firmware, the menu's 3 s, the kernel, the initramfs, then
# the restart (the initramfs's, or panic=10's). Scaled by slowness.
FAILED_BOOT_TIMEOUT = 300.0
MENU_B = ["anklume-1-live-b+3-0.conf", "anklume-2-slot-a.conf", "anklume-3-stick-b.conf",
          "anklume-4-slot-b.conf"]
# Slot A's menu after a rollback: a fresh counter, no entry of the failed B.
MENU_A = ["anklume-1-live-a+3-0.conf", "anklume-3-stick-a.conf", "anklume-4-slot-a.conf"]

# Step 3's broken B: a health check that fails, required by
# boot-complete.target (systemd-debug-generator makes the unit and the
# drop-in from these credentials, for the boots given them only).
UNHEALTHY_UNIT = "anklume-test-unhealthy.service"
UNHEALTHY = {
    f"systemd.extra-unit.{UNHEALTHY_UNIT}":
        b"[Unit]\nDescription=A health check that fails (test)\n"
        b"Before=boot-complete.target\n[Service]\nType=oneshot\nExecStart=/bin/false\n",
    "systemd.unit-dropin.boot-complete.target~anklume-test":
        f"[Unit]\nRequires={UNHEALTHY_UNIT}\n".encode(),
}
# The report of a boot that will not complete comes once anklumed has
# started and the project's own health check has run (anklumed's view of
# the boot is what is judged).
SETTLE_UNHEALTHY = ["anklumed.service", "anklume-boot-check.service"]


def key_values(text: str) -> dict[str, str]:
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


@dataclass
class Tamper:
    menu_before: list[str]
    caught: Boot             # slot B's kernel: verity refuses, restart into A's entry
    persist_between: dict[str, str]
    menu_between: list[str]
    landed: Boot             # slot A on its own kernel, up to the good mark
    persist_after: dict[str, str]
    menu_after: list[str]


@dataclass
class Attempt:
    boot: Boot
    persist: dict[str, str]  # PERSIST after it, read on the host
    menu: list[str]          # the ESP's entries after it


@dataclass
class Rollback:
    """Three failed attempts of B, then the boot the boot loader falls back to."""
    attempts: list[Attempt]
    back: Boot               # the boot after the third attempt
    persist_after: dict[str, str]
    menu_after: list[str]


@dataclass
class Panics(Rollback):
    kernel_verified: subprocess.CompletedProcess[bytes]  # sbverify of B's broken UKI


class Steps:
    def __init__(self, built: Built):
        shutil.rmtree(MACHINES, ignore_errors=True)
        self.built = built
        # Two vCPUs: each is a host thread, and the boot's parallel work
        # (udev, Python starts) takes the second core.
        self.machine = Machine(built.image, MACHINES / "machine", data_mib=DATA_MIB, cpus=2)

    def install_b(self) -> None:
        install_slot_b(self.machine, self.built)
        run_from_the_stick(self.machine)

    @functools.cached_property
    def tamper(self) -> Tamper:
        self.install_b()
        menu_before = esp_entries(self.machine, "tamper-before")
        flip_byte(self.machine, SLOT_B, TAMPERED_OFFSET)
        caught = self.machine.boot(timeout=FAILED_BOOT_TIMEOUT)
        between = persist_files(self.machine, "tamper-between")
        menu_between = esp_entries(self.machine, "tamper-between")
        landed = self.machine.boot(commands={"stub_image": STUB_IMAGE}, cut_after_report=True)
        return Tamper(menu_before, caught, between, menu_between, landed,
                      persist_files(self.machine, "tamper-after"),
                      esp_entries(self.machine, "tamper-after"))

    @functools.cached_property
    def panics(self) -> Panics:
        self.install_b()
        built, rundir = self.built, self.machine.rundir
        edit_esp_file(self.machine, boot_entries.uki_path(SlotName.B), lambda uki: signed_again(
            without_initrd(uki), rundir, built.secure_boot_key, built.secure_boot_cert))
        uki = rundir / "slot-b-broken.efi"
        uki.write_bytes(read_esp_file(self.machine, boot_entries.uki_path(SlotName.B)))
        verified = subprocess.run(["sbverify", "--cert", str(built.secure_boot_cert), str(uki)],
                                  capture_output=True, check=False)
        uki.unlink()
        rollback = self.three_attempts_then_back("panic", timeout=FAILED_BOOT_TIMEOUT)
        return Panics(**vars(rollback), kernel_verified=verified)

    @functools.cached_property
    def hangs(self) -> Rollback:
        self.install_b()
        return self.three_attempts_then_back("hang", credentials=UNHEALTHY,
                                             settle=SETTLE_UNHEALTHY, cut_after_report=True)

    def three_attempts_then_back(self, name: str, **boot: Any) -> Rollback:
        """Three boots of the broken B with ``boot``'s arguments, PERSIST and
        the menu read after each; then the fourth, up to anklumed's answer."""
        attempts = []
        for n in (1, 2, 3):
            attempt = self.machine.boot(**boot)
            attempts.append(Attempt(attempt, persist_files(self.machine, f"{name}-{n}"),
                                    esp_entries(self.machine, f"{name}-{n}")))
        back = self.machine.boot(until="anklumed", cut_after_report=True)
        return Rollback(attempts, back, persist_files(self.machine, f"{name}-after"),
                        esp_entries(self.machine, f"{name}-after"))


@pytest.fixture(scope="module")
def steps(built: Built) -> Iterator[Steps]:
    yield Steps(built)


def assert_ended_by_itself(boot: Boot) -> None:
    """No system reported: the boot restarted (QEMU's -no-reboot ended it)
    before the report unit could run, and did not hang."""
    assert boot.report is None and boot.powered_off and not boot.timed_out, boot.explain()


def assert_the_boot_loader_fell_back_to_a(rollback: Rollback) -> dict[str, str]:
    """The boot after three failed attempts of B is A's entry, chosen by
    systemd-boot alone (B's counted entry had no tries left); anklumed on A
    recorded the rollback, marked B failed and rewrote the menu for A.
    Returns PERSIST as that boot left it."""
    report = reported(rollback.back)
    assert (report["entry_selected"] or "").removesuffix(".conf") == "anklume-2-slot-a", report
    assert (report["boot_env"]["SLOT"], report["boot_env"]["TORAM"]) == ("A", "0"), \
        report["boot_env"]
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["PrimarySlot"]) == ("A", "A"), status
    last = status["LastRollback"]
    assert (last["from"], last["to"], last["reason"]) == ("B", "A", "boot-loader"), status
    assert_b_failed_and_a_primary(rollback.persist_after, "boot-loader")
    assert rollback.menu_after == MENU_A, rollback.menu_after
    return rollback.persist_after


def assert_b_failed_and_a_primary(files: dict[str, str], reason: str) -> None:
    last = key_values(files["last-rollback"])
    assert (last["FROM"], last["TO"], last["REASON"]) == ("B", "A", reason), last
    assert files["ab-state"].strip() == "A", files
    assert key_values(files["slots/B.meta"])["STATUS"] == "failed", files["slots/B.meta"]
    assert "redirect" not in files, files


# ---- 1. tamper ----------------------------------------------------------------------


def test_tamper_verity_refuses_the_slot_and_the_boot_restarts_into_the_other(
        steps: Steps) -> None:
    """One byte flipped in slot B's data on the stick, B primary and A ``ok``:
    the initramfs opens B through dm-verity, and the squashfs mount reads
    the tampered block: verity refuses it. The initramfs falls through to A
    in the same attempt (``last-rollback`` REASON=verity, written before
    anything else of A runs) and, A's kernel not being the one running,
    records the redirect and restarts into A's own entry."""
    tamper = steps.tamper
    assert tamper.menu_before == MENU_B, tamper.menu_before
    assert_ended_by_itself(tamper.caught)
    files = tamper.persist_between
    last = key_values(files["last-rollback"])
    assert (last["FROM"], last["TO"], last["REASON"]) == ("B", "A", "verity"), files
    assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("A", "1"), files
    assert key_values(files["redirect"]) == {
        "SLOT": "A", "AB_STATE": "A", "BOOT_COUNT": "1", "ROLLBACK_REASON": "verity",
        "DEGRADED": "0"}, files
    # The boot loader spent one try on B's counted entry; the one-shot entry
    # the restart asks for is one of those it never counts.
    assert tamper.menu_between == [MENU_B[0].replace("+3-0", "+2-1"), *MENU_B[1:]], \
        tamper.menu_between


def test_tamper_the_other_slot_boots_its_own_kernel_counted_once(steps: Steps) -> None:
    """The boot after the restart is slot A on its own UKI (the entry the
    initramfs asked systemd-boot for), the same attempt: PERSIST's count is
    still 1. The boot completes and is marked good; status shows the
    rollback and its reason."""
    report = reported(steps.tamper.landed)
    env = report["boot_env"]
    assert (env["SLOT"], env["BOOT_COUNT"], env["ROLLBACK"], env["DEGRADED"], env["TORAM"]) == \
        ("A", "1", "1", "0", "0"), env
    assert "anklume.kernel=A" in report["cmdline"], report["cmdline"]
    # systemd 257 keeps ".conf" in an entry's id; the specification drops it.
    assert (report["entry_selected"] or "").removesuffix(".conf") == "anklume-2-slot-a", report
    stub = report["commands"]["stub_image"]
    assert stub["stdout"].strip().lower().endswith("\\efi\\anklume\\slot-a.efi"), stub
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["PrimarySlot"]) == ("A", "A"), status
    assert (status["BootState"], status["MarkedGood"]) == ("rolled-back", True), status
    assert "kernel-of-other-slot" not in status["ProblemCodes"], status["Problems"]
    rollback = status["LastRollback"]
    assert (rollback["from"], rollback["to"], rollback["reason"]) == ("B", "A", "verity"), status
    assert report["failed"] == [], report["errors"]


def test_after_the_good_boot_persist_and_the_menu_agree(steps: Steps) -> None:
    """The redirect was taken (not left for another boot), the boot marked
    good (boot-count 0), B marked failed, and the menu is slot A's alone."""
    files = steps.tamper.persist_after
    assert_b_failed_and_a_primary(files, "verity")
    assert files["boot-count"].strip() == "0", files
    assert steps.tamper.menu_after == MENU_A, steps.tamper.menu_after


# ---- 2. a kernel that panics ----------------------------------------------------------


def test_a_kernel_panic_is_counted_by_the_boot_loader_alone(steps: Steps) -> None:
    """Slot B's UKI on the ESP with its initramfs zeroed in place and signed
    again by the stick's key (an update whose kernel cannot start its
    initramfs, built and signed the usual way: the issue's "kernel panics",
    the table's "broken initramfs"): the kernel finds no init and no root
    and panics; ``panic=10`` restarts it. None of anklume's code runs, so
    PERSIST cannot count: systemd-boot's counter, renamed before the UKI
    starts, is what counts each attempt."""
    panics = steps.panics
    assert panics.kernel_verified.returncode == 0, panics.kernel_verified.stderr
    for n, attempt in enumerate(panics.attempts, start=1):
        assert_ended_by_itself(attempt.boot)
        files = attempt.persist
        assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("B", "0"), \
            (n, files)
        assert attempt.menu == [f"anklume-1-live-b+{3 - n}-{n}.conf", *MENU_B[1:]], \
            (n, attempt.menu)


def test_after_three_panics_the_boot_loader_boots_a_and_anklumed_records_it(
        steps: Steps) -> None:
    """The fourth boot: systemd-boot found B's default entry with no tries
    left and started slot A's entry by itself; anklumed on A recorded the
    rollback PERSIST had not seen, marked B failed and rewrote the menu."""
    files = assert_the_boot_loader_fell_back_to_a(steps.panics)
    # A's first attempt: 1, or 0 once anklumed marked it good while the
    # report was being gathered (seen: the report takes tens of seconds).
    assert files["boot-count"].strip() in ("0", "1"), files


# ---- 3. a system that never reaches boot-complete.target ------------------------------


def test_a_boot_that_never_completes_is_counted_by_both_counters(steps: Steps) -> None:
    """Each of the three boots of B runs its system, where a health check
    fails and boot-complete.target is never reached: the boot is not marked
    good and anklumed's deadline runs. Each spent one try of B's default
    entry (systemd-boot) and one PERSIST attempt (the initramfs)."""
    hangs = steps.hangs
    for n, attempt in enumerate(hangs.attempts, start=1):
        report = reported(attempt.boot)
        assert report["waited"] == "boot-complete-failed", (n, report["waited"], report["jobs"])
        assert report["units"]["boot-complete.target"]["ActiveState"] == "inactive", \
            (n, report["units"])
        assert any(line.split()[0] == UNHEALTHY_UNIT for line in report["failed"]), \
            (n, report["failed"])
        env = report["boot_env"]
        assert (env["SLOT"], env["BOOT_COUNT"], env["ROLLBACK"]) == ("B", str(n), "0"), (n, env)
        status = report["status"]
        assert status is not None, (n, report["status_raw"])
        assert (status["BootedSlot"], status["MarkedGood"]) == ("B", False), (n, status)
        assert status["BootDeadline"] > 0, (n, status)  # the reboot that would end it
        files = attempt.persist
        assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("B", str(n)), \
            (n, files)
        assert attempt.menu == [f"anklume-1-live-b+{3 - n}-{n}.conf", *MENU_B[1:]], \
            (n, attempt.menu)


def test_after_three_boots_that_never_complete_a_boots_and_anklumed_records_it(
        steps: Steps) -> None:
    """The fourth boot: B's default entry has no tries left, systemd-boot
    starts slot A's entry; anklumed on A records the rollback, marks B
    failed and rewrites the menu for A."""
    assert_the_boot_loader_fell_back_to_a(steps.hangs)
