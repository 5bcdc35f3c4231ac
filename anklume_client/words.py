"""Plain words: one sentence for each state, code and error, for people.

A client shows these instead of parsing the daemon's English: by code, so a
translation or a tray icon can be chosen the same way. A code this library
does not know (a newer daemon's) is shown as the daemon's own sentence.
tests/unit/test_docs.py checks these tables against the daemon's codes.
"""

from __future__ import annotations

from anklume_client.errors import (
    DISCONNECTED,
    INCOMPATIBLE,
    TIMEOUT,
    UNREACHABLE,
    USAGE,
    ClientError,
    ExitCode,
)
from anklume_client.interface import ERROR_PREFIX
from anklume_client.models import Note

BOOT_STATES = {
    "good": "this boot is good",
    "pending": "this boot is not confirmed yet",
    "rolled-back": "an update failed and the previous system was restored",
    "degraded": "degraded",
}

SLOT_STATUSES = {
    "ok": "this system works",
    "pending": "this system has not been confirmed to work yet",
    "failed": "this system failed to start",
    "empty": "no system is installed here",
    "unknown": "the state of this system cannot be read",
}

DATA_STATES = {
    "absent": "no data disk is set up",
    "locked": "the data disk is locked",
    "unlocked": "the data disk is open but not mounted",
    "mounted": "the data disk is ready",
    "error": "the data disk needs attention",
}

JOB_STATES = {
    "running": "in progress",
    "succeeded": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}

# The hand-off's VERITY, for a person.
INTEGRITY = {
    "signed": "verified (signed)",
    "unsigned": "verified, unsigned image",
    "off": "not verified",
    "unknown": "unknown",
}

# StateReasonCodes (anklumed/slots/assessment.py ReasonCode)
REASONS = {
    "persist-unreadable": "the boot stick's state partition cannot be read",
    "booted-slot-unknown": "which system is running is unknown",
    "attempts-exhausted": "the system failed to start too many times and no other one is usable",
    "all-slots-exhausted": "every system failed to start; the last good one was started",
    "rolled-back": "an update failed and the previous system was restored",
}

# ProblemCodes (anklumed/problems.py ProblemCode)
PROBLEMS = {
    "handoff-damaged": "the boot left damaged information for the system",
    "kernel-of-other-slot":
        "this boot runs on the other slot's kernel; the next boot pairs them again",
    "boot-stick-unknown": "the boot stick cannot be found",
    "persist-damaged": "a file on the boot stick is damaged",
    "persist-unreadable": "the boot stick's state partition cannot be read",
    "pool-conf-unusable": "the data disk's settings on the boot stick cannot be used",
    "more-problems": "there are more problems",
}

# The Job's ErrorCode (anklumed/errors.py ErrorCode)
ERRORS = {
    "failed": "it could not be done",
    "internal-error": "anklumed failed unexpectedly (its journal says why)",
    "not-authorized": "you are not allowed to do this",
    "busy": "something else is running; try again when it is done",
    "invalid-argument": "a value given makes no sense",
    "not-found": "what was asked for does not exist",
    "verification-failed": "the update could not be verified and was not used",
    "incorrect-passphrase": "the passphrase is wrong",
    "refused-boot-device": "this disk may not hold the data",
    "cancelled": "it was cancelled",
    "disk-is-boot-stick": "this disk is the boot stick",
    "disk-holds-system": "the running system lives on this disk",
    "disk-mounted": "this disk is in use (mounted)",
    "disk-held": "this disk is in use by the system",
    "disk-read-only": "this disk is read-only",
    "disk-too-small": "this disk is too small",
    "disk-is-loop": "this is not a real disk",
    "persist-unavailable": "the boot stick cannot be reached (was it pulled out?)",
    "persist-file-damaged": "a file on the boot stick is damaged",
    "persist-read-only": "the boot stick cannot be written (is it write-protected?)",
    "persist-full": "the boot stick is full",
    "persist-io-error": "the boot stick failed to read or write: it may be failing",
    "ambiguous-stick": "several disks look like the boot stick",
    "command-failed": "a system tool failed",
    "filesystem-unavailable": "this system cannot make that filesystem",
}

# The DataDisk's MessageCode (anklumed/data/manager.py MessageCode)
MESSAGES = {
    "pulled": "the data disk was pulled out while in use",
    "pulled-held": "the data disk was pulled out while in use; its writes wait for it",
}

# A CandidateDisks record's refused_code (anklumed/data/disks.py Refusal)
REFUSALS = {
    "boot-stick": "it is the boot stick",
    "holds-system": "the running system lives on it",
    "mounted": "it is mounted",
    "held": "it is in use by the system",
    "read-only": "it is read-only",
    "too-small": "it is too small",
}


def sentence(note: Note, table: dict[str, str]) -> str:
    """The plain sentence for ``note``'s code, or the daemon's own sentence."""
    return table.get(note.code) or note.text


# Exit codes of the daemon's errors, by their short name.
EXIT_CODES = {
    "Failed": ExitCode.FAILED, "NotAuthorized": ExitCode.NOT_AUTHORIZED,
    "InvalidArgument": ExitCode.INVALID_ARGUMENT, "NotFound": ExitCode.NOT_FOUND,
    "Busy": ExitCode.BUSY, "VerificationFailed": ExitCode.VERIFICATION_FAILED,
    "IncorrectPassphrase": ExitCode.INCORRECT_PASSPHRASE,
    "RefusedBootDevice": ExitCode.REFUSED_BOOT_DEVICE, "Cancelled": ExitCode.CANCELLED,
}
UNREACHABLE_NAMES = (
    "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply", UNREACHABLE, TIMEOUT,
)


def explain(e: ClientError) -> tuple[str, ExitCode]:
    """One sentence for a person, and the exit code (docs/cli.md)."""
    if e.name == USAGE:
        return e.message, ExitCode.USAGE
    if e.name in (DISCONNECTED, INCOMPATIBLE):
        return e.message, ExitCode[e.name.upper()]
    if e.name == "org.freedesktop.DBus.Error.UnknownObject":
        return ("no such job (it may have been replaced by a newer one): see anklumectl "
                "jobs"), ExitCode.NOT_FOUND
    if e.name in UNREACHABLE_NAMES:
        return ("anklumed is not running or not reachable "
                "(try: systemctl status anklumed)"), ExitCode.UNREACHABLE
    if e.name == "org.freedesktop.DBus.Error.AccessDenied":
        return "the system bus refused the call: " + e.message, ExitCode.NOT_AUTHORIZED
    if e.name in ("org.freedesktop.DBus.Error.UnknownMethod",
                  "org.freedesktop.DBus.Error.UnknownInterface",
                  "org.freedesktop.DBus.Error.UnknownProperty"):
        return ("anklumed does not know this call (" + e.message + "): anklumectl and "
                "anklumed are from different versions; update them together"), \
            ExitCode.INCOMPATIBLE
    if e.name.startswith(ERROR_PREFIX):
        return e.message, EXIT_CODES.get(e.short_name, ExitCode.FAILED)
    return f"unexpected reply from anklumed ({e.name}): {e.message}", ExitCode.FAILED
