"""Which slot the initramfs boots, and what it writes first (DESIGN.md §3).

This is the reference implementation of the rule; ``initramfs/anklume-state.sh``
is the initramfs's, and both are checked against the raw PERSIST cases of
``spec/boot-cases/`` (``anklumed/slots/boot_decision.py`` reads a case the way
the shell does). It is pure: no I/O, no clock.

Beyond the §3 text, two choices, both made to boot something rather than fail:
- a primary that is not bootable (``empty``, ``pending`` = half-written,
  ``failed`` = marked bad) is left at once for the other slot when that one is
  ``ok``, without spending attempts on it;
- when no slot is usable, the slot last marked good is booted (if it is
  ``ok``) and the boot is reported degraded; the count keeps growing but is
  capped. "No slot usable" includes both slots exhausted: the other slot was
  already given up for the primary (``other_tried``) and the primary has used
  its attempts since; rolling back again would ping-pong A<->B forever.

The reasons a rollback is written with: ``boot-count``, ``slot-empty``,
``slot-pending``, ``slot-failed`` here, and the fall-through reasons
(``FALLTHROUGH_REASONS``) when the initramfs finds a slot that fails a check.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from anklumed.slots.model import MAX_BOOT_COUNT, SlotStatus
from anklumed.stick import SlotName

# Why the initramfs left a slot it was about to boot (docs/boot.md); any
# other word it is given is recorded as "check-failed".
FALLTHROUGH_REASONS = (
    "signature", "root-hash", "verity", "missing-tree", "missing-manifest",
    "missing-signature", "short-slot", "bad-meta", "mount",
)
UNKNOWN_FALLTHROUGH = "check-failed"


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    boot: SlotName
    ab_state: SlotName  # to write (unchanged when equal to the current one)
    boot_count: int  # to write
    # Why the slot booted is not the primary as it was: a rollback (ab-state
    # switches) or a fall-through from a slot that failed its checks.
    rollback_reason: str | None = None
    degraded: bool = False


def select_boot(
    primary: SlotName,
    boot_count: int,
    attempts: int,
    status: dict[SlotName, SlotStatus],
    last_good: SlotName | None = None,
    forced: SlotName | None = None,
    other_tried: bool = False,
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
        if boot_count >= attempts and not other_tried:
            return _rollback(other, "boot-count")
    next_count = min(boot_count + 1, MAX_BOOT_COUNT)
    exhausted = boot_count >= attempts or status[primary] is not SlotStatus.OK
    if not exhausted:
        return Decision(boot=primary, ab_state=primary, boot_count=next_count)
    if forced is None and last_good is other and other_ok:
        return Decision(boot=other, ab_state=primary, boot_count=next_count, degraded=True)
    return Decision(boot=primary, ab_state=primary, boot_count=next_count, degraded=True)


def _rollback(target: SlotName, reason: str) -> Decision:
    return Decision(boot=target, ab_state=target, boot_count=1, rollback_reason=reason)


def fall_through(
    primary: SlotName,
    boot_count: int,
    status: dict[SlotName, SlotStatus],
    failed: SlotName,
    reason: str,
    other_tried: bool = False,
) -> Decision | None:
    """The slot about to boot failed a check: boot the other one if it is ok.

    None: nothing is left to boot. Only a failure of the primary moves
    ab-state; a failed boot-menu choice or degraded boot of the non-primary
    slot boots the primary and changes nothing.
    """
    if reason not in FALLTHROUGH_REASONS:
        reason = UNKNOWN_FALLTHROUGH
    target = failed.other
    if status[target] is not SlotStatus.OK:
        return None
    if failed is not primary:
        return Decision(
            boot=target, ab_state=primary, boot_count=boot_count,
            rollback_reason=reason, degraded=True,
        )
    if other_tried:
        return None
    return _rollback(target, reason)
