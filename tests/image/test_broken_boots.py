"""Broken slots on the built image under OVMF: the failures of issue 14's
"tamper" and "broken update" caught as docs/boot-chain.md's table says, and
the stick back on the good slot with the reason on PERSIST and in
``anklumectl status``.

One machine for the file, its state carried from step to step (each step
starts on the stick the step before left, slot A booted after a rollback):

1. tamper -- slot B installed and primary, one byte of its data flipped;
2. a B whose kernel panics, three times;
3. a B whose system never reaches boot-complete.target, three times.

(The steps run in the file's order; each starts with slot B installed and
activated again, so one that failed leaves the next a stick it can use.)

Before each step slot B is installed again from the build's bundle on the
host, with the updater's own steps (tests/image/slot_install.py), and then
broken on the stick; the breakage is made from the same image, no second
build. Verdicts come from the report the booted system writes and from
PERSIST and the ESP read on the host between boots, never from the console.
A boot that fails ends by itself: QEMU runs with -no-reboot, and the failed
boots end in a restart (the initramfs's redirect, or ``panic=10``). The boot
back on slot A that ends each step reports as soon as anklumed answers (it
has then recorded the rollback and rewritten the menu) and its power is cut
there: being marked good is the first boot's and the redirect's concern
(test_boot_image.py, test_boot_redirect.py), and these boots are the
tier's most expensive part.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from anklumed.slots import boot_entries
from anklumed.stick import SlotName
from devtools.image_vm import Boot, Machine
from tests.image.conftest import Built
from tests.image.slot_install import (
    SLOT_B,
    edit_esp_file,
    esp_entries,
    flip_byte,
    install_slot_b,
    without_initrd,
)
from tests.image.test_boot_image import DATA_MIB, persist_files, reported

pytestmark = pytest.mark.image
MACHINES = Path("/var/tmp/anklume-image-broken")
# A byte of the squashfs's first 4 KiB block (not the superblock's 96 bytes
# themselves): dm-verity checks a whole block on any read of it, and
# mounting the squashfs reads its superblock.
TAMPERED_OFFSET = 3000
# A failed boot: firmware, the menu's 3 s, the kernel, maybe the copy to
# RAM, then the restart (the initramfs's, or panic=10's). Scaled by slowness.
FAILED_BOOT_TIMEOUT = 400.0
B_DEFAULT_ENTRY = f"{boot_entries.ENTRIES_DIR}/{boot_entries.default_name(SlotName.B, 3)}"


def key_values(text: str) -> dict[str, str]:
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


@dataclass
class Attempt:
    boot: Boot
    persist: dict[str, str]  # PERSIST after it, read on the host
    menu: list[str]          # the ESP's entries after it


@dataclass
class ThreeAttempts:
    attempts: list[Attempt]
    back: Boot               # the boot after the third attempt
    persist_after: dict[str, str]
    menu_after: list[str]


@dataclass
class Tamper:
    caught: Boot             # slot B's kernel: verity refuses, restart into A's entry
    persist_between: dict[str, str]
    landed: Boot             # slot A on its own kernel
    persist_after: dict[str, str]


class Steps:
    def __init__(self, built: Built):
        shutil.rmtree(MACHINES, ignore_errors=True)
        self.built = built
        self.machine = Machine(built.image, MACHINES / "machine", data_mib=DATA_MIB)

    def install_b(self) -> None:
        install_slot_b(self.machine, self.built, menu_for=SlotName.B)

    @functools.cached_property
    def tamper(self) -> Tamper:
        self.install_b()
        flip_byte(self.machine, SLOT_B, TAMPERED_OFFSET)
        caught = self.machine.boot(timeout=FAILED_BOOT_TIMEOUT)
        between = persist_files(self.machine, "tamper-between")
        landed = self.back_on_a()
        return Tamper(caught, between, landed, persist_files(self.machine, "tamper-after"))

    @functools.cached_property
    def panic(self) -> ThreeAttempts:
        self.install_b()
        edit_esp_file(self.machine, boot_entries.uki_path(SlotName.B), without_initrd)
        return self.three_attempts("panic")

    @functools.cached_property
    def hang(self) -> ThreeAttempts:
        self.install_b()
        edit_esp_file(self.machine, B_DEFAULT_ENTRY,
                      lambda text: text.replace(b" quiet\n", b" init=/usr/bin/false quiet\n"))
        return self.three_attempts("hang")

    def back_on_a(self) -> Boot:
        return self.machine.boot(until="anklumed", cut_after_report=True)

    def three_attempts(self, name: str) -> ThreeAttempts:
        attempts = []
        for n in (1, 2, 3):
            boot = self.machine.boot(timeout=FAILED_BOOT_TIMEOUT)
            attempts.append(Attempt(boot, persist_files(self.machine, f"{name}-{n}"),
                                    esp_entries(self.machine, f"{name}-{n}")))
        back = self.back_on_a()
        return ThreeAttempts(attempts, back, persist_files(self.machine, f"{name}-after"),
                             esp_entries(self.machine, f"{name}-after"))


@pytest.fixture(scope="module")
def steps(built: Built) -> Iterator[Steps]:
    yield Steps(built)


def assert_ended_by_itself(boot: Boot) -> None:
    """No system reported: the boot restarted (QEMU's -no-reboot ended it)
    before the report unit could run, and did not hang."""
    assert boot.report is None and boot.powered_off and not boot.timed_out, boot.explain()


def assert_back_on_a_after_boot_loader_fallback(run: ThreeAttempts) -> dict[str, Any]:
    """The fourth boot: systemd-boot found B's default entry with no tries
    left and started slot A's entry by itself; anklumed on A recorded the
    rollback PERSIST had not seen."""
    report = reported(run.back)
    assert (report["entry_selected"] or "").removesuffix(".conf") == "anklume-2-slot-a", report
    assert report["boot_env"]["SLOT"] == "A", report["boot_env"]
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["PrimarySlot"]) == ("A", "A"), status
    rollback = status["LastRollback"]
    assert (rollback["from"], rollback["to"], rollback["reason"]) == ("B", "A", "boot-loader"), \
        status
    files = run.persist_after
    last = key_values(files["last-rollback"])
    assert (last["FROM"], last["TO"], last["REASON"]) == ("B", "A", "boot-loader"), last
    # A's first attempt: 1, or 0 once anklumed marked it good while the
    # report was being gathered (seen: the report takes tens of seconds).
    assert files["ab-state"].strip() == "A" and files["boot-count"].strip() in ("0", "1"), files
    assert key_values(files["slots/B.meta"])["STATUS"] == "failed", files["slots/B.meta"]
    # The menu is slot A's again, with a fresh counter and no entry of B.
    assert run.menu_after == ["anklume-1-live-a+3-0.conf", "anklume-3-stick-a.conf",
                              "anklume-4-slot-a.conf"], run.menu_after
    return report


# ---- 1. tamper ----------------------------------------------------------------------


def test_tamper_verity_refuses_the_slot_and_the_boot_restarts_into_the_other(
        steps: Steps) -> None:
    """One byte flipped in slot B's data on the stick, B primary and A ``ok``:
    the initramfs copies B (toram), opens it through dm-verity, and the
    squashfs mount reads the tampered block: verity refuses it. The
    initramfs falls through to A in the same attempt (``last-rollback``
    REASON=verity, written before anything else of A runs) and, A's kernel
    not being the one running, restarts into A's own entry."""
    tamper = steps.tamper
    assert_ended_by_itself(tamper.caught)
    files = tamper.persist_between
    last = key_values(files["last-rollback"])
    assert (last["FROM"], last["TO"], last["REASON"]) == ("B", "A", "verity"), files
    assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("A", "1"), files
    assert key_values(files["redirect"]) == {
        "SLOT": "A", "AB_STATE": "A", "BOOT_COUNT": "1", "ROLLBACK_REASON": "verity",
        "DEGRADED": "0"}, files


def test_tamper_the_other_slot_boots_and_status_names_the_check(steps: Steps) -> None:
    """The boot after the restart is slot A on its own kernel, the same
    attempt (counted once); status shows the rollback and its reason, and
    anklumed marked B failed."""
    report = reported(steps.tamper.landed)
    env = report["boot_env"]
    assert (env["SLOT"], env["BOOT_COUNT"], env["ROLLBACK"], env["DEGRADED"]) == \
        ("A", "1", "1", "0"), env
    assert (report["entry_selected"] or "").removesuffix(".conf") == "anklume-2-slot-a", report
    status = report["status"]
    assert status is not None, report["status_raw"]
    assert (status["BootedSlot"], status["PrimarySlot"]) == ("A", "A"), status
    rollback = status["LastRollback"]
    assert (rollback["from"], rollback["to"], rollback["reason"]) == ("B", "A", "verity"), status
    files = steps.tamper.persist_after
    assert "redirect" not in files, files
    # A's first attempt: 1, or 0 once anklumed marked it good while the
    # report was being gathered (seen: the report takes tens of seconds).
    assert files["ab-state"].strip() == "A" and files["boot-count"].strip() in ("0", "1"), files
    assert key_values(files["last-rollback"])["REASON"] == "verity", files
    assert key_values(files["slots/B.meta"])["STATUS"] == "failed", files["slots/B.meta"]


# ---- 2. a kernel that panics ----------------------------------------------------------


def test_a_kernel_panic_is_counted_by_the_boot_loader_alone(steps: Steps) -> None:
    """Slot B's UKI on the ESP with its initramfs zeroed in place (an update
    whose kernel cannot start its initramfs: the issue's "kernel panics",
    the table's "broken initramfs"): the kernel finds no init and no root
    and panics; ``panic=10`` restarts it. None of anklume's code runs, so
    PERSIST cannot count: systemd-boot's counter, renamed before the UKI
    starts, is what counts each attempt."""
    for n, attempt in enumerate(steps.panic.attempts, start=1):
        assert_ended_by_itself(attempt.boot)
        files = attempt.persist
        assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("B", "0"), \
            (n, files)
        assert f"anklume-1-live-b+{3 - n}-{n}.conf" in attempt.menu, (n, attempt.menu)


def test_after_three_panics_the_boot_loader_boots_a_and_anklumed_records_it(
        steps: Steps) -> None:
    assert_back_on_a_after_boot_loader_fallback(steps.panic)


# ---- 3. a system that never reaches boot-complete.target -------------------------------


def test_a_system_that_never_completes_is_counted_on_persist_and_by_the_boot_loader(
        steps: Steps) -> None:
    """Slot B's default entry with ``init=/usr/bin/false``: the initramfs
    runs, counts the attempt on PERSIST, verifies and mounts slot B, and
    B's system dies at once (its init exits; the kernel panics, panic=10
    restarts it) -- a B that never reaches boot-complete.target, so never
    marked good. A B that hangs instead is ended by anklumed's deadline
    (600 s after the kernel starts; tests/unit/test_boot_deadline.py):
    either way the attempt ends unmarked, which is what is counted. Both
    counters move: PERSIST's boot-count and systemd-boot's."""
    for n, attempt in enumerate(steps.hang.attempts, start=1):
        assert_ended_by_itself(attempt.boot)
        files = attempt.persist
        assert (files["ab-state"].strip(), files["boot-count"].strip()) == ("B", str(n)), \
            (n, files)
        assert f"anklume-1-live-b+{3 - n}-{n}.conf" in attempt.menu, (n, attempt.menu)


def test_after_three_unfinished_boots_the_stick_is_back_on_a(steps: Steps) -> None:
    assert_back_on_a_after_boot_loader_fallback(steps.hang)
