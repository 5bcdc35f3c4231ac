"""The events a person or a monitoring tool looks for in the journal.

Each has a fixed MESSAGE_ID (``journalctl MESSAGE_ID=…``) and an entry in
``catalog/anklume.catalog`` that explains it (``journalctl -x``). They go
through the daemon's logger: under systemd its handler is systemd.journal's
JournalHandler (anklumed/main.py), which sends the record's upper-case extras
(MESSAGE_ID, SLOT, FROM, TO, REASON, VERSION, POOL) as journal fields; without
journald the same record is a plain log line and the fields are in its text.
Sending through the logger rather than beside it keeps one entry per event.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Protocol

log = logging.getLogger("anklumed.events")


class Event(Enum):
    """Each event's MESSAGE_ID: made once (uuid4), never changed once shipped."""

    ROLLED_BACK_AT_BOOT = "607d240670ef4548a09301811cd96274"
    ROLLBACK_REQUESTED = "4f9addd0fdce4c70bafa3bd54a0f0c8f"
    BOOT_MARKED_GOOD = "113daa6be2c045648419c994ee8a8840"
    BOOT_DEGRADED = "5d6b0623b24f4d6e9188b974de94413b"
    UPDATE_INSTALLED = "b1a754a5ce84440cbc15d6ed8c0de5bf"
    UPDATE_FAILED = "8a9c47f9b5ae450d8e0bf791437923cb"
    DATA_UNLOCK_FAILED = "b01c3b5b24834daca5d8fc3eb29740a8"
    DATA_DISK_PULLED = "2e6fa8ae24624b1c9777a6e7a790f637"


def emit(event: Event, level: int, message: str, **fields: object) -> None:
    """Log MESSAGE with the event's MESSAGE_ID and FIELDS (upper-case names)."""
    extra = {"MESSAGE_ID": event.value}
    extra.update({key: str(value) for key, value in fields.items() if value is not None})
    log.log(level, "%s", message, extra=extra)


# ---- the call sites' one-liners ----

def boot_marked_good(slot: str) -> None:
    emit(Event.BOOT_MARKED_GOOD, logging.INFO, f"slot {slot} marked good", SLOT=slot)


def rollback_requested(from_slot: str, to_slot: str) -> None:
    emit(Event.ROLLBACK_REQUESTED, logging.WARNING,
         f"manual rollback: slot {to_slot} is now primary (was {from_slot})",
         FROM=from_slot, TO=to_slot, REASON="manual")


def update_installed(slot: str, version: str, signed_by: str | None) -> None:
    signed = f", signed by {signed_by}" if signed_by else ", unsigned"
    emit(Event.UPDATE_INSTALLED, logging.INFO,
         f"slot {slot} now holds {version}{signed}; it boots next",
         SLOT=slot, VERSION=version, SIGNED_BY=signed_by or "")


def job_finished(kind: str, state: str, error_name: str, message: str) -> None:
    """An update job that ended in failure (or was cancelled) is an event."""
    if kind == "update" and state in ("failed", "cancelled"):
        emit(Event.UPDATE_FAILED, logging.ERROR, f"update {state}: {message or error_name}",
             REASON=error_name or state)


def data_unlock_failed(pool: str, attempts_left: int) -> None:
    """A wrong passphrase; when no attempt is left, unlocking is paused."""
    if attempts_left > 0:
        emit(Event.DATA_UNLOCK_FAILED, logging.WARNING,
             f"wrong passphrase for the data disk (pool {pool}); {attempts_left} left",
             POOL=pool, REASON="wrong-passphrase", ATTEMPTS_LEFT=attempts_left)
    else:
        emit(Event.DATA_UNLOCK_FAILED, logging.WARNING,
             f"wrong passphrase for the data disk (pool {pool}), again: unlocking is paused",
             POOL=pool, REASON="paused", ATTEMPTS_LEFT=0)


def data_disk_pulled(pool: str) -> None:
    emit(Event.DATA_DISK_PULLED, logging.WARNING,
         f"the data disk (pool {pool}) was pulled out while in use: its I/O is held "
         "until it comes back", POOL=pool)


# ---- the boot as anklumed finds it when it starts ----

class _Rollback(Protocol):
    @property
    def from_slot(self) -> str: ...
    @property
    def to_slot(self) -> str: ...
    @property
    def reason(self) -> str: ...


class _State(Protocol):
    @property
    def last_rollback(self) -> _Rollback | None: ...


class _Assessment(Protocol):
    @property
    def state(self) -> str: ...
    @property
    def booted(self) -> str | None: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...


class _Slots(Protocol):
    """What is read of anklumed.slots.controller.SlotController (no import: the
    package root does not depend on slots/)."""

    @property
    def assessment(self) -> _Assessment: ...
    @property
    def state(self) -> _State | None: ...


def boot_found(slots: _Slots, rollback_from: str | None) -> None:
    """At start: a rollback the initramfs made for this boot, or a degraded boot."""
    assessment = slots.assessment
    booted = assessment.booted
    if assessment.state == "rolled-back":
        last = slots.state.last_rollback if slots.state else None
        recorded = last is not None and last.to_slot == booted
        source = rollback_from or (last.from_slot if last and recorded else None)
        reason = last.reason if last and recorded else "unknown"
        emit(Event.ROLLED_BACK_AT_BOOT, logging.WARNING,
             f"this boot was rolled back from slot {source or '?'} to slot {booted or '?'} "
             f"({reason})", FROM=source, TO=booted, SLOT=booted, REASON=reason)
    elif assessment.state == "degraded":
        why = "; ".join(assessment.reasons) or "no reason given"
        emit(Event.BOOT_DEGRADED, logging.WARNING, f"this boot is degraded: {why}",
             SLOT=booted, REASON=why)
