"""anklume_desktop.daemon reads through the client library: the codes when
anklumed publishes them, the library's fallbacks (the older positional
properties) when it does not, and the desktop's words for each code."""

from __future__ import annotations

from anklume_client.errors import ClientError
from anklume_desktop import words
from anklume_desktop.daemon import (
    BootState,
    DaemonError,
    DataState,
    JobState,
    Outcome,
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
    stick, free, future = parse_data_disk({**POSITIONAL, **NAMED}).candidates
    assert stick.refused_code == "boot-stick"
    assert words.refusal(stick) == "this is the boot stick"  # our words, not the daemon's
    assert free.usable and words.refusal(free) == ""
    assert not future.usable and words.refusal(future) == "a new reason"


def test_the_positional_candidates_are_the_fallback() -> None:
    stick, free = parse_data_disk(POSITIONAL).candidates
    assert stick.refused_code == "" and not stick.usable
    assert words.refusal(stick) == "it is the boot stick (it holds ANKLUME partitions)"
    assert stick.contents == ("sda1: vfat", "sda2: squashfs") and stick.serial == "S1"
    assert free.usable and free.contents == ()


def test_reasons_and_messages_are_plain_words_by_code() -> None:
    coded = parse_status({"StateReasons": ["rolled back from slot B (boot-count)"],
                          "StateReasonCodes": ["rolled-back"]})
    assert coded.reasons == ("an update failed and the previous system was restored",)
    older = parse_status({"StateReasons": ["rolled back from slot B"]})
    assert older.reasons == ("rolled back from slot B",)
    data = parse_data_disk({"State": "error", "Message": "vault gone", "MessageCode": "pulled"})
    assert data.message == "the data disk was pulled out while in use"


def test_unknown_states_do_not_crash() -> None:
    status = parse_status({"BootState": "sideways", "StateReasons": ["x"]})
    assert status.boot_state == BootState.UNKNOWN and status.reasons == ("x",)
    data = parse_data_disk({"State": "melted", "Encryption": "none", "Adoptable": [
        ["/dev/sdb", "vault", "u-u-i-d"]]})
    assert data.state == DataState.UNKNOWN and not data.encrypted
    assert data.adoptable[0].pool == "vault"
    assert parse_status({"LastUpdate": {"state": "running"}}).update_running


def test_errors_are_codes_whatever_the_daemon_revision() -> None:
    refused = DaemonError.of(ClientError("org.anklume.Live1.Error.NotAuthorized", "no"))
    assert refused.code == "not-authorized"
    assert words.advice(refused.code).startswith("The administrator's authorization")
    gone = DaemonError.of(ClientError("org.freedesktop.DBus.Error.ServiceUnknown", "x"))
    assert gone.code == "unreachable" and "systemctl status anklumed" in words.advice(gone.code)
    wrong = Outcome(JobState.FAILED, "incorrect-passphrase", "the passphrase is wrong")
    assert "keyboard layout" in words.explain_outcome(wrong)
    assert "Choose another disk" in words.advice("disk-is-boot-stick")
