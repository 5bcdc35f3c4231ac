"""What anklumed publishes and logs, whatever PERSIST holds and whoever calls (issue 16).

Each test drives the real daemon on the private bus; the case ids are those
of docs/hostile-inputs.md's "D-Bus calls" (test_dbus_fuzz.py checks the list).
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devtools.slowness import scaled
from tests.service.conftest import Sim

REPO = Path(__file__).resolve().parents[2]
MANAGER = {"path": "/org/anklume/Live1", "interface": "org.anklume.Live1.Manager"}
DATA = {"path": "/org/anklume/Live1/data", "interface": "org.anklume.Live1.DataDisk"}

# The case classes these tests run, beside the fuzzer's (devtools/dbus_fuzz.py).
CASES = {
    "persist-control-characters": "NUL, an escape sequence, invalid UTF-8 in PERSIST text "
                                  "that the daemon publishes",
    "refusal-flood": "1,000 refused calls from nobody in one burst",
    "no-reply-flood": "the same, each asking for no answer (NO_REPLY_EXPECTED)",
    "problem-flood": "a 60 KB junk slot meta (30,000 problems)",
    "refresh-flood": "40 concurrent DataDisk.Refresh from nobody, twice",
}


def write_persist_bytes(sim: Sim, files: dict[str, bytes]) -> None:
    """Write raw bytes to PERSIST files, as another computer could."""
    with sim.persist_mounted() as mnt:
        subprocess.run(["mount", "-o", "remount,rw", mnt], check=True)
        for name, data in files.items():
            (mnt / name).write_bytes(data)


def flood(sim: Sim, spec: dict[str, Any], user: str = "nobody") -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.dbus_fuzz", "--bus", sim.bus.address, "--user", user,
         "--flood", json.dumps(spec)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=scaled(120))
    assert proc.returncode == 0, proc.stderr
    answers: dict[str, int] = json.loads(proc.stdout)
    return answers


def log_since(sim: Sim, offset: int) -> str:
    return sim.daemon_log.read_bytes()[offset:].decode(errors="replace")


def test_control_characters_on_persist_are_published_escaped(sim: Sim) -> None:
    """A NUL in last-rollback reached the bus, which dropped anklumed; a
    restarted anklumed died before taking its name, at every boot."""
    write_persist_bytes(sim, {
        "last-rollback": b"FROM=A\nTO=B\nREASON=a\x00b\n",
        "slots/B.meta": b"STATUS=ok\nVERSION=\xff\xfe\x1b[2J\xe2\x80\xae1\n",
    })
    sim.restart_daemon()  # raises if anklumed exits before owning its name
    proc = sim.ctl("status", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "\\u0000" not in proc.stdout and "\\u001b" not in proc.stdout, proc.stdout
    status = json.loads(proc.stdout)
    reason = status["LastRollback"].get("reason")  # or reported as a problem
    if reason is not None:  # escaped here, or replaced by the parser (persist)
        assert reason in ("a\\x00b", "a\ufffdb"), reason
    version = status["Slots"]["B"]["Version"]
    assert "\x1b" not in version and "\u202e" not in version
    # Still on the bus, and a second start (the next boot) works too.
    assert sim.daemon is not None and sim.daemon.poll() is None
    sim.restart_daemon()
    assert sim.status()["BootedSlot"] == "A"


def test_refused_calls_are_one_short_line_each_and_rate_limited(sim: Sim) -> None:
    """1,000 refused calls from nobody wrote 11,000 lines with tracebacks."""
    sim.set_polkit("deny")
    before = sim.daemon_log.stat().st_size
    answers = flood(sim, {**MANAGER, "member": "MarkBad", "signature": "s",
                          "body": ["B"], "count": 1000})
    assert answers == {"org.anklume.Live1.Error.NotAuthorized": 1000}
    time.sleep(0.5)
    lines = log_since(sim, before).splitlines()
    assert "Traceback" not in "\n".join(lines)
    refusals = [line for line in lines if "refused" in line]
    assert 1 <= len(refusals) <= 10, refusals
    # Besides: disks probed because a loop device came or went on this machine.
    about_calls = [line for line in lines if "anklumed.command: +" not in line
                   and " uevent " not in line]
    assert len(about_calls) < 30, about_calls[:20]
    # The rest is counted and said once, at the latest a period later.
    deadline = time.monotonic() + scaled(15)
    while time.monotonic() < deadline and "suppressed" not in log_since(sim, before):
        time.sleep(0.5)
    summary = [line for line in log_since(sim, before).splitlines() if "suppressed" in line]
    assert summary and "more refusals from :" in summary[0], summary
    assert sim.status()["BootedSlot"] == "A"


def test_refused_calls_that_want_no_answer_log_no_traceback(sim: Sim) -> None:
    """A caller may ask for no answer (NO_REPLY_EXPECTED): dbus-fast then
    logged each refusal again, with its traceback ("unexpected exception in
    future"), past the rate limit: 1,000 calls, 1,000 tracebacks."""
    sim.set_polkit("deny")
    before = sim.daemon_log.stat().st_size
    sent = flood(sim, {**MANAGER, "member": "MarkBad", "signature": "s", "body": ["B"],
                       "count": 1000, "no_reply": True})
    assert sent == {"sent": 1000}
    # All refused once the count of the suppressed ones is written.
    deadline = time.monotonic() + scaled(30)
    while time.monotonic() < deadline and "suppressed" not in log_since(sim, before):
        time.sleep(0.5)
    lines = log_since(sim, before).splitlines()
    assert any("more refusals from :" in line for line in lines), lines[-20:]
    assert not [line for line in lines if "Traceback" in line or "unexpected" in line], \
        "\n".join(lines[-30:])
    assert 1 <= len([line for line in lines if "refused" in line]) <= 10
    assert sim.status()["BootedSlot"] == "A"


def test_problems_are_capped_where_published(sim: Sim) -> None:
    """A 60 KB junk meta made 30,000 problems and a 2 MB status."""
    write_persist_bytes(sim, {"slots/B.meta": b"junk\n" * 12_000 + b"x" * 5000 + b"\n"})
    sim.restart_daemon()
    proc = sim.ctl("status", "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) < 64 * 1024, len(proc.stdout)
    problems = json.loads(proc.stdout)["Problems"]
    assert 1 <= len(problems) <= 21 and all(len(p) <= 300 for p in problems), problems
    if len(problems) == 21:
        assert problems[-1].startswith("… and ") and problems[-1].endswith(" more problems")


def probes_of(sim: Sim, text: str) -> int:
    return text.count(f"+ blkid -p -o export {sim.data_disk}\n")


def test_refresh_from_anyone_is_coalesced_and_rate_limited(sim: Sim) -> None:
    """Refresh needs no authorization; each call probed every disk."""
    probed = sim.ctl("data", "status", "--json")  # waits for the first probe
    assert probed.returncode == 0 and json.loads(probed.stdout)["DisksProbed"], probed.stderr
    sim.set_polkit("deny")
    refresh = {**DATA, "member": "Refresh", "count": 40}
    # A block device plugged anywhere on this machine (another test's loop
    # device) makes the daemon look again on its own: such a window is retried.
    for _ in range(4):
        time.sleep(5.5)  # past the interval of the last probe
        before = sim.daemon_log.stat().st_size
        time.sleep(2.5)  # a look the daemon started on its own before this ends here
        start = sim.daemon_log.stat().st_size
        assert flood(sim, refresh) == {"return": 40}
        assert flood(sim, refresh) == {"return": 40}  # within the interval: no probe
        time.sleep(1)  # a uevent's own look starts 0.5 s after it
        uevents = log_since(sim, before).count(" uevent ")
        if not uevents:
            assert probes_of(sim, log_since(sim, start)) == 1
            return
    assert probes_of(sim, log_since(sim, start)) <= 1 + uevents
