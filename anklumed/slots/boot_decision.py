"""The initramfs's boot decision, computed in Python from the same PERSIST files.

``initramfs/anklume-state.sh`` decides the boot; this module reads a PERSIST
directory through anklumed's own reader (``read_slots_state``) plus the two
inputs the reader does not type (the strict ``LAST_GOOD_AT`` stamps and the
``last-rollback`` marker) and applies ``selection.select_boot``. The tests
run both on every raw case of ``spec/boot-cases/`` and on random states, so
the shell and anklumed cannot drift apart on what a damaged file means.
"""

from __future__ import annotations

import re

from anklumed.persist import PersistDir, parse_kv
from anklumed.slots.model import LAST_ROLLBACK, SlotsState, meta_file, read_slots_state
from anklumed.slots.selection import (
    FALLTHROUGH_REASONS,
    UNKNOWN_FALLTHROUGH,
    Decision,
    fall_through,
    select_boot,
)
from anklumed.stick import SlotName

# The form anklumed writes (timestamps.format_time); only this form orders
# correctly as a string, so any other one counts as "never marked good".
_STAMP = re.compile(
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$"
)
# The last-rollback key recording the TO slot's LAST_GOOD_AT at the rollback
# ("none" if it had none): equal to it still means "not marked good since".
MARKER = "TO_LAST_GOOD_AT"
NEVER = "none"
_CMDLINE_WORD = re.compile(rb"[ \t\n]+")


def stamp(text: str | None) -> str:
    """``text`` if it is a valid ``YYYY-MM-DDTHH:MM:SSZ`` time, else ""."""
    return text if text is not None and _STAMP.match(text) else ""


def forced_slot(cmdline: bytes | None) -> SlotName | None:
    """The slot the last ``anklume.slot=`` word names (None if absent or invalid)."""
    if cmdline is None:
        return None
    value = None
    for word in _CMDLINE_WORD.split(cmdline.replace(b"\0", b"?")):
        if word.startswith(b"anklume.slot="):
            value = word[len(b"anklume.slot=") :]
    return SlotName.parse(value.decode("utf-8", "replace")) if value is not None else None


def _kv(pdir: PersistDir, name: str) -> dict[str, str]:
    try:
        text = pdir.read_text(name)
    except Exception:  # a directory, a huge file: the reader reports it
        return {}
    return parse_kv(text)[0] if text is not None else {}


def good_stamps(pdir: PersistDir) -> dict[SlotName, str]:
    return {s: stamp(_kv(pdir, meta_file(s)).get("LAST_GOOD_AT")) for s in SlotName}


def last_good(stamps: dict[SlotName, str], primary: SlotName) -> SlotName | None:
    """The slot with the newer valid ``LAST_GOOD_AT``; a tie keeps the primary."""
    mine, theirs = stamps[primary], stamps[primary.other]
    if theirs and (not mine or theirs > mine):
        return primary.other
    return primary if mine else None


def other_tried(pdir: PersistDir, primary: SlotName, stamps: dict[SlotName, str]) -> bool:
    """The other slot was given up for the primary, not marked good since."""
    rollback = _kv(pdir, LAST_ROLLBACK)
    return (
        SlotName.parse(rollback.get("FROM", "")) is primary.other
        and SlotName.parse(rollback.get("TO", "")) is primary
        and rollback.get(MARKER) == (stamps[primary] or NEVER)
    )


class BootInputs:
    """What the rule needs, read once from a PERSIST directory."""

    def __init__(self, pdir: PersistDir) -> None:
        self.state: SlotsState = read_slots_state(pdir)
        self.stamps = good_stamps(pdir)
        primary = self.state.primary
        self.last_good = last_good(self.stamps, primary)
        self.other_tried = other_tried(pdir, primary, self.stamps)
        self.status = {s: self.state.meta[s].status for s in SlotName}


def decide(pdir: PersistDir, cmdline: bytes | None = None) -> tuple[Decision, BootInputs]:
    inputs = BootInputs(pdir)
    state = inputs.state
    decision = select_boot(
        state.primary,
        state.boot_count,
        state.boot_attempts,
        inputs.status,
        last_good=inputs.last_good,
        forced=forced_slot(cmdline),
        other_tried=inputs.other_tried,
    )
    return decision, inputs


def decide_fall_through(
    pdir: PersistDir, failed: SlotName, reason: str
) -> tuple[Decision | None, BootInputs]:
    inputs = BootInputs(pdir)
    state = inputs.state
    decision = fall_through(
        state.primary, state.boot_count, inputs.status, failed, reason, inputs.other_tried
    )
    return decision, inputs


def as_lines(
    decision: Decision | None, inputs: BootInputs, reason: str | None = None
) -> dict[str, str]:
    """The ``KEY=value`` lines ``anklume-state.sh`` prints for this decision.

    ``decision`` None is a fall-through with nothing left to boot (``reason``
    is then the reason it was asked with).
    """
    last = inputs.last_good.value if inputs.last_good else ""
    if decision is None:
        if reason not in FALLTHROUGH_REASONS:
            reason = UNKNOWN_FALLTHROUGH
        return {
            "BOOT": "", "AB_STATE": inputs.state.primary.value,
            "BOOT_COUNT": str(inputs.state.boot_count), "ROLLBACK_REASON": reason,
            "DEGRADED": "1", "LAST_GOOD": last,
        }
    return {
        "BOOT": decision.boot.value,
        "AB_STATE": decision.ab_state.value,
        "BOOT_COUNT": str(decision.boot_count),
        "ROLLBACK_REASON": decision.rollback_reason or "",
        "DEGRADED": "1" if decision.degraded else "0",
        "LAST_GOOD": last,
    }
