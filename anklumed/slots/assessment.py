"""Boot assessment: how healthy is this boot, from PERSIST and the hand-off.

Pure: the daemon feeds it what it read; tests feed it tables.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from anklumed.handoff import Handoff
from anklumed.slots.model import SlotsState, SlotStatus
from anklumed.stick import SlotName


class BootState(StrEnum):
    GOOD = "good"  # marked good during this boot
    PENDING = "pending"  # not yet marked good; attempts are being counted
    ROLLED_BACK = "rolled-back"  # this boot is the result of an automatic rollback
    DEGRADED = "degraded"  # no usable fallback, or the state cannot be read


class ReasonCode(StrEnum):
    """Why the boot state is what it is, as a stable word: ``StateReasonCodes``
    on the bus, parallel to the sentences of ``StateReasons`` (docs/dbus.md
    "Codes")."""

    PERSIST_UNREADABLE = "persist-unreadable"
    BOOTED_SLOT_UNKNOWN = "booted-slot-unknown"
    ATTEMPTS_EXHAUSTED = "attempts-exhausted"  # the primary used its attempts, no fallback
    ALL_SLOTS_EXHAUSTED = "all-slots-exhausted"  # booted as the last good slot
    ROLLED_BACK = "rolled-back"


class Assessment(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: BootState
    booted: SlotName | None
    primary: SlotName | None
    marked_good: bool
    fallback: SlotName | None  # the slot a rollback would go to, if it is ok
    reasons: tuple[str, ...] = ()
    reason_codes: tuple[ReasonCode, ...] = ()  # one per reason, in the same order


def marked_good_this_boot(
    slots: SlotsState, booted: SlotName | None, boot_time: datetime | None
) -> bool:
    if booted is None:
        return False
    if booted is slots.primary and slots.boot_count == 0:
        return True
    last_good = slots.meta[booted].last_good_at
    return last_good is not None and boot_time is not None and last_good >= boot_time


def assess(
    slots: SlotsState | None,
    handoff: Handoff,
    boot_time: datetime | None,
    persist_error: str | None = None,
) -> Assessment:
    booted = handoff.slot
    if slots is None:
        return Assessment(
            state=BootState.DEGRADED, booted=booted, primary=None, marked_good=False,
            fallback=None,
            reasons=(persist_error or "ANKLUME-PERSIST cannot be read",),
            reason_codes=(ReasonCode.PERSIST_UNREADABLE,),
        )
    other = slots.primary.other
    fallback = other if slots.meta[other].status is SlotStatus.OK else None
    good = marked_good_this_boot(slots, booted, boot_time)
    reasons: list[tuple[ReasonCode, str]] = []
    if booted is None:
        reasons.append((ReasonCode.BOOTED_SLOT_UNKNOWN,
                        "the booted slot is unknown (no boot hand-off, no anklume.slot=)"))
    elif booted is slots.primary and slots.boot_count > slots.boot_attempts and not good:
        reasons.append((ReasonCode.ATTEMPTS_EXHAUSTED,
                        f"slot {booted} used {slots.boot_count} attempts of "
                        f"{slots.boot_attempts} and no other slot is usable"))
    elif handoff.degraded and not good:
        # Both slots exhausted (docs/boot.md): the initramfs booted the last
        # good slot, which need not be the primary.
        reasons.append((ReasonCode.ALL_SLOTS_EXHAUSTED, f"no slot has attempts left; slot "
                        f"{booted} was booted as the last good one"))
    if handoff.rollback:
        source = handoff.rollback_from or (slots.last_rollback and slots.last_rollback.from_slot)
        reasons.insert(0, (ReasonCode.ROLLED_BACK, f"rolled back from slot {source or '?'}"))
        state = BootState.ROLLED_BACK
    elif reasons:
        state = BootState.DEGRADED
    else:
        state = BootState.GOOD if good else BootState.PENDING
    return Assessment(
        state=state, booted=booted, primary=slots.primary, marked_good=good,
        fallback=fallback, reasons=tuple(text for _, text in reasons),
        reason_codes=tuple(code for code, _ in reasons),
    )
