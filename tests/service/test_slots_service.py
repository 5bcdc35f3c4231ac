"""Status and slot control through the real daemon and anklumectl."""

import json

from devtools.slowness import scaled
from tests.service.conftest import Sim

NOBODY = "nobody"
OK_B = "STATUS=ok\nVERSION=1.1.0\nROOT_HASH=ab12\n"


def assert_clean_error(stderr: str) -> None:
    assert "Traceback" not in stderr and 'File "' not in stderr


def test_status(sim: Sim) -> None:
    s = sim.status()
    assert s["BootedSlot"] == "A" and s["PrimarySlot"] == "A"
    assert s["BootState"] == "pending" and s["BootCount"] == 1 and s["BootAttempts"] == 3
    assert s["BootDisk"] == str(sim.stick.loop) if sim.stick else False
    assert s["Slots"]["A"]["Status"] == "ok" and s["Slots"]["A"]["Version"] == "1.0.0"
    assert len(s["Slots"]["A"]["RootHash"]) == 64
    assert s["Slots"]["B"]["Status"] == "empty"
    assert [p[0] for p in s["Partitions"]] == [
        "ANKLUME-EFI", "ANKLUME-OS-A", "ANKLUME-OS-B", "ANKLUME-PERSIST"]
    assert s["BootMediaPresent"] is True and s["SafeToRemove"] is False
    assert s["Problems"] == []
    human = sim.ctl("status")
    assert human.returncode == 0 and "slot A" in human.stdout


def test_mark_good(sim: Sim) -> None:
    result = sim.ctl("mark-good")
    assert result.returncode == 0, result.stderr
    s = sim.status()
    assert s["BootState"] == "good" and s["BootCount"] == 0 and s["MarkedGood"]
    files = sim.persist_files()
    assert files["boot-count"] == "0\n"
    assert "LAST_GOOD_AT=2026-11-01T10:05:00Z" not in files["slots/A.meta"]  # restamped
    assert not any(name.endswith(".tmp") for name in files)


def test_rollback_refused_to_empty_slot_changes_nothing(sim: Sim) -> None:
    before = sim.persist_files()
    for args in (("rollback",), ("rollback", "--force")):
        result = sim.ctl(*args)
        assert result.returncode == 4, result.stderr
        assert "empty" in result.stderr
        assert_clean_error(result.stderr)
    assert sim.persist_files() == before


def test_rollback_and_set_primary(sim: Sim) -> None:
    sim.edit_persist({"slots/B.meta": OK_B})
    result = sim.ctl("rollback")
    assert result.returncode == 0, result.stderr
    s = sim.status()
    assert s["PrimarySlot"] == "B" and s["BootCount"] == 0
    assert s["LastRollback"]["reason"] == "manual"
    files = sim.persist_files()
    assert files["ab-state"] == "B\n" and files["boot-count"] == "0\n"
    assert sim.ctl("set-primary", "a").returncode == 0
    assert sim.persist_files()["ab-state"] == "A\n"


def test_set_primary_failed_slot_needs_force(sim: Sim) -> None:
    sim.edit_persist({"slots/B.meta": "STATUS=failed\n"})
    refused = sim.ctl("set-primary", "B")
    assert refused.returncode == 4 and "--force" in refused.stderr
    assert sim.ctl("set-primary", "B", "--force").returncode == 0
    assert sim.status()["PrimarySlot"] == "B"


def test_mark_bad_primary_moves_to_ok_fallback(sim: Sim) -> None:
    sim.edit_persist({"slots/B.meta": OK_B})
    assert sim.ctl("mark-bad", "A").returncode == 0
    s = sim.status()
    assert s["Slots"]["A"]["Status"] == "failed" and s["PrimarySlot"] == "B"


def test_invalid_slot_name(sim: Sim) -> None:
    before = sim.persist_files()
    for args in (("set-primary", "C"), ("mark-bad", "A; rm -rf /"), ("set-primary", "")):
        result = sim.ctl(*args)
        assert result.returncode == 4, result.stderr
        assert "A or B" in result.stderr
    assert sim.persist_files() == before


def test_unauthorized_caller_changes_nothing(sim: Sim) -> None:
    sim.set_polkit("deny")
    before = sim.persist_files()
    for args in (("mark-good",), ("rollback", "--force"), ("set-primary", "A"),
                 ("mark-bad", "A")):
        result = sim.ctl(*args, user=NOBODY)
        assert result.returncode == 3, result.stderr
        assert "not allowed" in result.stderr
        assert_clean_error(result.stderr)
    assert sim.persist_files() == before
    calls = [json.loads(line) for line in sim.polkit_log.read_text().splitlines()]
    assert {c["action"] for c in calls} == {"org.anklume.live1.switch-slot"}
    assert all(c["subject"] == "system-bus-name" and c["name"].startswith(":") for c in calls)
    # Reading needs no authorization.
    status = sim.ctl("status", "--json", user=NOBODY)
    assert status.returncode == 0 and json.loads(status.stdout)["BootedSlot"] == "A"


def test_challenge_honours_interactive_flag(sim: Sim) -> None:
    sim.set_polkit("challenge")
    refused = sim.ctl("--no-ask-password", "mark-good", user=NOBODY)
    assert refused.returncode == 3 and "password" in refused.stderr
    assert sim.persist_files()["boot-count"] == "1\n"
    allowed = sim.ctl("--ask-password", "mark-good", user=NOBODY)
    assert allowed.returncode == 0, allowed.stderr
    flags = [json.loads(line)["flags"] for line in sim.polkit_log.read_text().splitlines()]
    assert flags == [0, 1]
    assert sim.persist_files()["boot-count"] == "0\n"


def test_without_polkit_only_root_may_change(sim: Sim) -> None:
    sim.set_polkit("absent")
    refused = sim.ctl("mark-good", user=NOBODY)
    assert refused.returncode == 3 and "only root" in refused.stderr
    assert sim.ctl("mark-good").returncode == 0


def test_allowed_unprivileged_caller(sim: Sim) -> None:
    sim.set_polkit("allow")
    assert sim.ctl("mark-good", user=NOBODY).returncode == 0
    assert sim.status()["BootState"] == "good"


def test_os_integrity_from_the_handoff(sim: Sim) -> None:
    assert sim.status()["Verity"] == "unsigned"  # the simulator's slot has no signature
    assert "verified, unsigned image" in sim.ctl("status").stdout
    sim.write_handoff(sim.handoff.read_text().replace("VERITY=unsigned", "VERITY=signed"))
    sim.restart_daemon()
    assert sim.status()["Verity"] == "signed"
    assert "verified (signed)" in sim.ctl("status").stdout


def test_boot_deadline_is_the_time_left(sim: Sim) -> None:
    """BootDeadline counts down the seconds this boot has left to complete
    (not a time of day), and anklumectl status shows it."""
    # The daemon's boot clock is set (a time namespace): this machine may
    # have been up for minutes or for days.
    sim.stop_daemon()
    sim.start_daemon(uptime=700)
    assert sim.status()["BootDeadline"] == 0  # the default 600 s have passed
    with (sim.workdir / "anklumed.toml").open("a") as f:
        f.write("boot_deadline = 86400\n")
    sim.stop_daemon()
    sim.start_daemon(uptime=60)
    left = sim.status()["BootDeadline"]
    assert 86400 - 60 - scaled(60) < left <= 86400 - 60, left
    human = sim.ctl("status")
    assert human.returncode == 0 and "Boot deadline" in human.stdout, human.stdout
    assert sim.ctl("mark-good").returncode == 0
    assert sim.status()["BootDeadline"] == 0
