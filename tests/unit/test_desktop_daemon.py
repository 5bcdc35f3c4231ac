"""anklume_desktop.daemon reads codes when anklumed publishes them and falls
back to the older properties when it does not (main's daemon has no codes)."""

from __future__ import annotations

from anklume_desktop import words
from anklume_desktop.daemon import (
    BootState,
    DataState,
    Refusal,
    parse_candidates,
    parse_data_disk,
    parse_status,
)

NAMED = {"CandidateDisks": [
    {"name": "sda", "device": "/dev/sda", "model": "Stick", "size": 8 << 30, "bus": "usb",
     "contents": ["sda1: vfat"], "refused": "it is the boot stick (it holds ANKLUME partitions)",
     "refused_code": "boot-stick"},
    {"name": "sdb", "device": "/dev/sdb", "size": 1 << 40, "refused": "", "refused_code": ""},
    {"name": "sdc", "device": "/dev/sdc", "size": 1 << 30, "refused": "a new reason",
     "refused_code": "from-the-future"},
]}
POSITIONAL = {"Candidates": [
    ["sda", "/dev/sda", "Stick", 8 << 30, "usb", "S1", "sda1: vfat; sda2: squashfs",
     "it is the boot stick (it holds ANKLUME partitions)"],
    ["sdb", "/dev/sdb", "", 1 << 40, "ata", "", "", ""],
]}


def test_codes_are_used_when_published() -> None:
    stick, free, future = parse_candidates({**POSITIONAL, **NAMED})
    assert stick.refusal == Refusal.BOOT_STICK
    assert words.refusal(stick) == "this is the boot stick"  # our words, not the daemon's
    assert free.usable and words.refusal(free) == ""
    assert future.refusal == Refusal.OTHER and words.refusal(future) == "a new reason"


def test_the_positional_candidates_are_the_fallback() -> None:
    stick, free = parse_candidates(POSITIONAL)
    assert stick.refusal == Refusal.OTHER
    assert words.refusal(stick) == "it is the boot stick (it holds ANKLUME partitions)"
    assert stick.contents == ("sda1: vfat", "sda2: squashfs")
    assert free.usable and free.contents == ()


def test_unknown_states_do_not_crash() -> None:
    status = parse_status({"BootState": "sideways", "StateReasons": ["x"]})
    assert status.boot_state == BootState.UNKNOWN and status.reason_codes == ()
    data = parse_data_disk({"State": "melted", "Encryption": "none", "Adoptable": [
        ["/dev/sdb", "vault", "u-u-i-d"]]})
    assert data.state == DataState.UNKNOWN and not data.encrypted
    assert data.adoptable[0].pool == "vault"
    assert parse_status({"LastUpdate": {"state": "running"}}).update_running
