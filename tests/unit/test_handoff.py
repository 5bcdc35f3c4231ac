"""The hand-off's VERITY: how the initramfs checked the running OS."""

import pytest

from anklumed.handoff import VerityState, parse_handoff
from anklumed.stick import SlotName


@pytest.mark.parametrize(("value", "expected", "problem"), [
    ("signed", VerityState.SIGNED, False),
    (" Unsigned\r", VerityState.UNSIGNED, False),
    ("off", VerityState.OFF, False),
    ("1", VerityState.UNSIGNED, False),  # DESIGN.md's first 0/1 form
    ("0", VerityState.OFF, False),
    ("yes", VerityState.UNKNOWN, True),
    ("", VerityState.UNKNOWN, True),
    (None, VerityState.UNKNOWN, False),
])
def test_verity(value: str | None, expected: VerityState, problem: bool) -> None:
    env = "SLOT=A\n" + (f"VERITY={value}\n" if value is not None else "")
    handoff = parse_handoff(env, "")
    assert handoff.verity is expected
    assert any("VERITY" in p for p in handoff.problems) is problem


def test_verity_unknown_without_a_handoff() -> None:
    assert parse_handoff(None, "anklume.slot=B").verity is VerityState.UNKNOWN


def test_a_system_on_the_other_slots_kernel_is_said() -> None:
    """The boot entry names the kernel's slot (docs/boot-chain.md); when the
    initramfs booted the other slot's system on it, status says so."""
    env = "SLOT=A\nBOOT_COUNT=1\nROLLBACK=0\nVERITY=signed\n"
    matched = parse_handoff(env, "boot=anklume anklume.kernel=A quiet")
    assert matched.kernel == SlotName.A and matched.kernel_mismatch() is None
    crossed = parse_handoff(env, "boot=anklume anklume.kernel=B quiet")
    assert crossed.kernel == SlotName.B and crossed.problems == ()  # not a damaged hand-off
    assert "runs on slot B's kernel" in (crossed.kernel_mismatch() or "")
    assert parse_handoff(env, "boot=anklume").kernel is None  # a stick without UKIs


def test_the_kernel_found_by_the_initramfs_wins_over_the_command_line() -> None:
    """Under Secure Boot the command line is the UKI's own and names no slot:
    the initramfs writes the slot of the UKI systemd-stub started (KERNEL)."""
    env = "SLOT=A\nBOOT_COUNT=1\nROLLBACK=0\nVERITY=signed\nKERNEL=B\n"
    assert parse_handoff(env, "boot=anklume quiet").kernel == SlotName.B
    assert parse_handoff(env, "boot=anklume anklume.kernel=A quiet").kernel == SlotName.B
    assert parse_handoff(env.replace("KERNEL=B", "KERNEL="),
                         "boot=anklume anklume.kernel=A").kernel == SlotName.A
