"""Plain words for the daemon's codes: what the person reads, and what to do.

Keyed by code, never by the daemon's English: the daemon's sentence is shown
only as detail, or where no code exists yet (``Refusal.OTHER``).
"""

from __future__ import annotations

from anklume_desktop.daemon import DaemonError, Disk, Outcome, Refusal
from anklumectl.render import human_size

__all__ = ["advice", "explain_error", "explain_outcome", "human_size", "refusal"]

REFUSALS = {
    Refusal.BOOT_STICK: "this is the boot stick",
    Refusal.HOLDS_SYSTEM: "the running system lives on it",
    Refusal.MOUNTED: "something on it is mounted: unmount it first",
    Refusal.HELD: "the kernel is using it (device-mapper, RAID or LVM)",
    Refusal.READ_ONLY: "it is read-only",
    Refusal.TOO_SMALL: "it is too small (at least 256 MiB)",
}

# What to do after a failed call or job, by error code.
ADVICE = {
    "NotAuthorized": "The administrator's authorization was refused or not given: "
                     "nothing was changed. Try again and authenticate when asked.",
    "Busy": "Another operation on the data disk is running. Wait for it to end, "
            "then try again.",
    "RefusedBootDevice": "This disk cannot hold the data. Choose another disk.",
    "IncorrectPassphrase": "The passphrase is wrong. Check the keyboard layout "
                           "(AZERTY/QWERTY: Alt+Shift) and try again.",
    "Unreachable": "anklumed, the system service, is not answering. Check it with "
                   "'systemctl status anklumed', then open the guide again.",
    "Timeout": "anklumed did not answer in time. Check 'systemctl status anklumed'.",
    "Cancelled": "The operation was cancelled before it changed anything that "
                 "matters: you can start it again.",
    "NotFound": "The disk is gone: was it unplugged? Plug it in and try again.",
    "InvalidArgument": "A value was refused: correct it and try again.",
}
FAILED = ("It failed. Nothing is left looking set up: the disk is not used as the "
          "data disk. You can start again (it erases the disk again); the details "
          "are in 'journalctl -u anklumed'.")


def refusal(disk: Disk) -> str:
    """Why a disk is refused, in plain words ("" when it may be used)."""
    if disk.refusal is None:
        return ""
    return REFUSALS.get(disk.refusal, disk.refusal_text or "it cannot be used")


def advice(code: str) -> str:
    if code.startswith("disk-"):  # a job refused a disk (anklumed's Refusal.error_code)
        return ADVICE["RefusedBootDevice"]
    return ADVICE.get(code, FAILED)


def explain_error(error: DaemonError) -> str:
    return f"{error.message}\n{advice(error.code)}"


def explain_outcome(outcome: Outcome) -> str:
    return f"{outcome.message}\n{advice(outcome.error_code)}"

