"""What the tray shows for a state of the system (pure: tested without a bus).

One look per situation, the most urgent first: a person must see a rolled-back
or degraded boot, a pulled data disk or an unreachable daemon, so those are
``NeedsAttention`` and nothing is ever ``Passive`` (some hosts hide Passive).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from anklume_desktop.daemon import BootState, DataDisk, DataState, Progress, Status


class Look(StrEnum):
    """The icon: its name is ``anklume-live-<look>``; its pixmap is drawn in its colour."""

    UNREACHABLE = "unreachable"
    DEGRADED = "degraded"
    ROLLED_BACK = "rolled-back"
    PULLED = "pulled"
    UPDATING = "updating"
    PENDING = "pending"
    LOCKED = "locked"
    GOOD = "good"


# ARGB, opaque. Distinct enough to tell apart on a screenshot.
COLOURS = {
    Look.UNREACHABLE: (255, 128, 128, 128),
    Look.DEGRADED: (255, 220, 30, 30),
    Look.ROLLED_BACK: (255, 230, 120, 0),
    Look.PULLED: (255, 200, 0, 200),
    Look.UPDATING: (255, 30, 110, 230),
    Look.PENDING: (255, 230, 200, 0),
    Look.LOCKED: (255, 0, 170, 170),
    Look.GOOD: (255, 40, 180, 60),
}
# The part of the updating disc not done yet (the done part has UPDATING's colour).
REMAINING = (255, 160, 200, 245)
ATTENTION = {Look.UNREACHABLE, Look.DEGRADED, Look.ROLLED_BACK, Look.PULLED}


class Action(StrEnum):
    UPDATE = "update"
    ROLLBACK = "rollback"
    LOCK = "lock"
    UNLOCK = "unlock"
    GUIDE = "guide"


@dataclass(frozen=True)
class MenuEntry:
    action: Action
    label: str
    enabled: bool


@dataclass(frozen=True)
class View:
    look: Look
    title: str
    tooltip: str
    menu: tuple[MenuEntry, ...]
    done: float = 1.0  # the part of a running update done (the icon's pie)

    @property
    def icon_name(self) -> str:
        return f"anklume-live-{self.look}"

    @property
    def status(self) -> str:
        return "NeedsAttention" if self.look in ATTENTION else "Active"


BOOT_WORDS = {
    BootState.GOOD: "this boot is confirmed",
    BootState.PENDING: "this boot is not confirmed yet",
    BootState.ROLLED_BACK: "an update failed: the previous system was restored",
    BootState.DEGRADED: "the system is degraded",
    BootState.UNKNOWN: "the boot state is unknown",
}
DATA_WORDS = {
    DataState.ABSENT: "no data disk yet: your work is lost at shutdown",
    DataState.LOCKED: "data disk locked",
    DataState.UNLOCKED: "data disk unlocked",
    DataState.MOUNTED: "data disk unlocked",
    DataState.ERROR: "data disk in trouble",
    DataState.UNKNOWN: "data disk unknown",
}


def _look(status: Status, data: DataDisk) -> Look:
    if status.boot_state == BootState.DEGRADED:
        return Look.DEGRADED
    if status.boot_state == BootState.ROLLED_BACK:
        return Look.ROLLED_BACK
    if data.pulled:
        return Look.PULLED
    if status.update_running:
        return Look.UPDATING
    if status.boot_state != BootState.GOOD:
        return Look.PENDING
    if data.state == DataState.LOCKED:
        return Look.LOCKED
    return Look.GOOD


def progress_words(progress: Progress | None) -> tuple[str, float]:
    """``writing 40%`` and 0.4; the phase alone (and a whole disc) while the
    total is not known yet."""
    if progress is None:
        return "", 1.0
    phase = progress.phase or "starting"
    if progress.total <= 0:
        return phase, 1.0
    # Whole percents: the icon is redrawn (and the host told) only when one passes.
    percent = min(max(progress.done * 100 // progress.total, 0), 100)
    return f"{phase} {percent}%", percent / 100


def view(status: Status | None, data: DataDisk | None,
         progress: Progress | None = None) -> View:
    """The tray for this state; ``None`` for both: anklumed is not reachable."""
    if status is None or data is None:
        return View(Look.UNREACHABLE, "anklume Live",
                    "anklumed is not answering: the tray reconnects when it is back",
                    (MenuEntry(Action.GUIDE, "Open the welcome guide", True),))
    look = _look(status, data)
    lines = [BOOT_WORDS[status.boot_state].capitalize() + f" (slot {status.booted_slot or '?'})",
             DATA_WORDS[data.state].capitalize() + (" — unplugged!" if data.pulled else "")]
    said, done = progress_words(progress if status.update_running else None)
    if status.update_running:
        lines.append("Update running" + (f": {said}" if said else ""))
    if status.primary_slot and status.booted_slot and status.primary_slot != status.booted_slot:
        lines.append(f"Slot {status.primary_slot} boots next")
    if status.safe_to_remove:
        lines.append("The USB stick can be safely removed")
    lines += list(status.reasons[:2])
    unlocked = data.state in (DataState.MOUNTED, DataState.UNLOCKED)
    menu = (
        MenuEntry(Action.UPDATE, "Update now", not status.update_running),
        MenuEntry(Action.ROLLBACK, f"Roll back to slot {status.fallback_slot}"
                  if status.fallback_slot else "Roll back (no other slot is ready)",
                  bool(status.fallback_slot)),
        MenuEntry(Action.LOCK, "Lock the data disk", unlocked),
        MenuEntry(Action.UNLOCK, "Unlock the data disk", data.state == DataState.LOCKED),
        MenuEntry(Action.GUIDE, "Open the welcome guide", True),
    )
    return View(look, "anklume Live", "\n".join(lines), menu,
                done if look == Look.UPDATING else 1.0)
