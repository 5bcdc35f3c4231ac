"""Which slot the initramfs boots, and what it writes first (DESIGN.md §3).

This is the reference implementation of the rule; ``spec/boot-selection.tsv``
is the table both this function and the initramfs are checked against. It is
pure: no I/O, no clock.

Beyond the §3 text, two choices, both made to boot something rather than fail:
- a primary that is not bootable (``empty``, ``pending`` = half-written,
  ``failed`` = marked bad) is left at once for the other slot when that one is
  ``ok``, without spending attempts on it;
- when no slot is usable, the slot last marked good is booted and the boot is
  reported degraded; the count keeps growing but is capped.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from anklumed.slots.model import MAX_BOOT_COUNT, SlotStatus
from anklumed.stick import SlotName


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    boot: SlotName
    ab_state: SlotName  # to write (unchanged when equal to the current one)
    boot_count: int  # to write
    rollback_reason: str | None = None  # set when ab-state switches automatically
    degraded: bool = False


def select_boot(
    primary: SlotName,
    boot_count: int,
    attempts: int,
    status: dict[SlotName, SlotStatus],
    last_good: SlotName | None = None,
    forced: SlotName | None = None,
) -> Decision:
    other = primary.other
    if forced is not None and forced is not primary:
        # A boot-menu choice of the other slot: boot it, leave the primary's
        # state alone (its attempts are not being spent).
        return Decision(
            boot=forced,
            ab_state=primary,
            boot_count=boot_count,
            degraded=status[forced] is not SlotStatus.OK,
        )
    other_ok = status[other] is SlotStatus.OK
    if forced is None and other_ok:
        if status[primary] is not SlotStatus.OK:
            return _rollback(other, f"slot-{status[primary].value}")
        if boot_count >= attempts:
            return _rollback(other, "boot-count")
    next_count = min(boot_count + 1, MAX_BOOT_COUNT)
    exhausted = boot_count >= attempts or status[primary] is not SlotStatus.OK
    if not exhausted:
        return Decision(boot=primary, ab_state=primary, boot_count=next_count)
    if forced is None and last_good is other:
        return Decision(boot=other, ab_state=primary, boot_count=next_count, degraded=True)
    return Decision(boot=primary, ab_state=primary, boot_count=next_count, degraded=True)


def _rollback(target: SlotName, reason: str) -> Decision:
    return Decision(boot=target, ab_state=target, boot_count=1, rollback_reason=reason)
