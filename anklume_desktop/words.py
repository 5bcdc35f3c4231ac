"""Plain words for the daemon's codes: what the person reads, and what to do.

Keyed by code, never by the daemon's English: the daemon's sentence is shown
only as detail, or where it gives no code this client knows (an older
daemon, or a newer one's new code).
"""

from __future__ import annotations

from anklume_desktop.daemon import Backend, DaemonError, Disk, Outcome
from anklumectl.render import human_size

__all__ = ["advice", "explain_error", "explain_outcome", "filesystems_note", "human_size",
           "refusal"]

# A CandidateDisks record's refused_code: with what to do, unlike the
# library's words.REFUSALS.
REFUSALS = {
    "boot-stick": "this is the boot stick",
    "holds-system": "the running system lives on it",
    "mounted": "something on it is mounted: unmount it first",
    "held": "the kernel is using it (device-mapper, RAID or LVM)",
    "read-only": "it is read-only",
    "too-small": "it is too small (at least 256 MiB)",
}

# What to do after a failed call or job, by error code (a job's ErrorCode,
# a DaemonError's code).
ADVICE = {
    "not-authorized": "The administrator's authorization was refused or not given: "
                      "nothing was changed. Try again and authenticate when asked.",
    "busy": "Another operation on the data disk is running. Wait for it to end, "
            "then try again.",
    "refused-boot-device": "This disk cannot hold the data. Choose another disk.",
    "incorrect-passphrase": "The passphrase is wrong. Check the keyboard layout "
                            "(AZERTY/QWERTY: Alt+Shift) and try again.",
    "unreachable": "anklumed, the system service, is not answering. Check it with "
                   "'systemctl status anklumed', then open the guide again.",
    "timeout": "anklumed did not answer in time. Check 'systemctl status anklumed'.",
    "disconnected": "The connection to anklumed was lost during the operation: check "
                    "'systemctl status anklumed' and what the guide or 'anklumectl "
                    "jobs' says now before starting it again.",
    "cancelled": "The operation was cancelled before it changed anything that "
                 "matters: you can start it again.",
    "not-found": "The disk is gone: was it unplugged? Plug it in and try again.",
    "invalid-argument": "A value was refused: correct it and try again.",
}
FAILED = ("It failed. Nothing is left looking set up: the disk is not used as the "
          "data disk. You can start again (it erases the disk again); the details "
          "are in 'journalctl -u anklumed'.")


# Why the setup offers no ZFS (DataDisk.Filesystems lacks it): one line.
ZFS_MISSING = ("ZFS is not offered: this system does not have it, or Secure Boot "
               "refused its kernel module.")
NO_FILESYSTEM = "This system can make neither ZFS nor BTRFS: no data disk can be set up here."


def filesystems_note(offered: tuple[Backend, ...]) -> str:
    """What the setup screen says of the filesystems it offers ("" when ZFS is there)."""
    if not offered:
        return NO_FILESYSTEM
    return "" if Backend.ZFS in offered else ZFS_MISSING


def refusal(disk: Disk) -> str:
    """Why a disk is refused, in plain words ("" when it may be used)."""
    if disk.usable:
        return ""
    return REFUSALS.get(disk.refused_code) or disk.refused or "it cannot be used"


def advice(code: str) -> str:
    if code.startswith("disk-"):  # a job refused a disk (anklumed's Refusal.error_code)
        return ADVICE["refused-boot-device"]
    return ADVICE.get(code, FAILED)


def explain_error(error: DaemonError) -> str:
    return f"{error.message}\n{advice(error.code)}"


def explain_outcome(outcome: Outcome) -> str:
    return f"{outcome.message}\n{advice(outcome.error_code)}"

