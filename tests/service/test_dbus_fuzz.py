"""The D-Bus fuzzer (devtools/dbus_fuzz.py) against the real daemon (the
catalogue of docs/hostile-inputs.md that lists its case classes is checked
in tests/unit/test_hostile_catalogue.py).

Every method the daemon exports (introspected, so a new one is fuzzed
without a change here) is called with each case class as root, as nobody
whom polkit denies, and as nobody whom polkit allows. The daemon must stay
up and on the bus, answer status between calls, answer every call with a
named org.anklume.Live1.Error.* or a standard org.freedesktop.DBus.Error.*,
never with a traceback, and log no unexpected error.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from anklumed.slots import source
from devtools.dbus_fuzz import CASES as FUZZ_CASES
from devtools.slowness import scaled
from tests.service.conftest import Sim

REPO = Path(__file__).resolve().parents[2]
XML = REPO / "dbus" / "org.anklume.Live1.xml"
SEED = 16  # issue 16; each caller adds its own offset
# Found by this fuzzer, fixed on the `sources` branch (slots/source.py's
# check_source refuses an empty source and one over 4096 characters at the
# call): until that is merged, Update with a 1 MiB source fails its job as
# "internal error: OSError" (ENAMETOOLONG from Path.is_file), and with an
# empty one as "internal error: ValueError" (Path('.').with_suffix), each with
# a traceback in the journal.
KNOWN_UPDATE_BUG = "Update with a huge or empty source: an internal error in slots/source.py"


def run_fuzzer(sim: Sim, user: str | None, seed: int) -> dict:  # type: ignore[type-arg]
    argv = [sys.executable, "-m", "devtools.dbus_fuzz", "--bus", sim.bus.address,
            "--seed", str(seed), "--rounds", "150"]
    proc = subprocess.run(argv + (["--user", user] if user else []), cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=scaled(110))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("user", "polkit"), [(None, "allow"), ("nobody", "deny"),
                                              ("nobody", "allow")])
def test_fuzzed_calls_get_named_errors_and_the_daemon_stays_up(
        sim: Sim, user: str | None, polkit: str) -> None:
    # A job object exists only once a job ran: a lock with no data disk makes
    # one (and fails in it), so that Job.Cancel is fuzzed too.
    sim.ctl("data", "lock")
    assert sim.status()["Jobs"], "no job object to fuzz"
    sim.set_polkit(polkit)
    before = sim.daemon_log.stat().st_size
    report = run_fuzzer(sim, user, SEED + (0 if user is None else 1 if polkit == "deny" else 2))
    assert report["violations"] == [], report
    assert set(report["cases"]) == set(FUZZ_CASES)
    declared = set(re.findall(r'<method name="(\w+)"', XML.read_text()))
    fuzzed = {m.split()[0].rsplit(".", 1)[1] for m in report["methods"]}
    assert declared <= fuzzed, declared - fuzzed
    if user is not None and polkit == "deny":
        assert report["replies"].get("org.anklume.Live1.Error.NotAuthorized", 0) > 50
    # Alive, on the bus, answering, and nothing went wrong inside.
    assert sim.daemon is not None and sim.daemon.poll() is None
    assert sim.name_owned()
    assert sim.status()["BootedSlot"] == "A"
    log = sim.daemon_log.read_bytes()[before:].decode(errors="replace")
    # No disk was opened or written: Setup and Adopt never got past choosing one.
    commands = [line for line in log.splitlines() if "anklumed.command: +" in line]
    assert not [c for c in commands if re.search(r"\b(cryptsetup|mkfs|wipefs|zpool|sgdisk)\b",
                                                 c)], commands
    known = log.count("(update) failed: internal error:")
    if known and not hasattr(source, "check_source"):
        # Nothing else went wrong: each traceback is one of the known bug's.
        assert log.count("Traceback") == log.count("failed unexpectedly") == known, log[-3000:]
        pytest.xfail(KNOWN_UPDATE_BUG)
    assert "Traceback" not in log and "unexpectedly" not in log, log[-3000:]
