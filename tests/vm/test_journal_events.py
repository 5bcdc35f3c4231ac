"""anklumed's events in the real journal of a systemd guest: found by their
MESSAGE_ID, with their fields, and explained by the installed catalog."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from anklumed.events import Event
from devtools.slowness import scaled

pytestmark = pytest.mark.vm(mode="systemd")


def journal(*args: str) -> str:
    return subprocess.run(["journalctl", "--no-pager", *args], capture_output=True,
                          text=True, check=True, timeout=scaled(60)).stdout


def marked_good_entries() -> list[dict[str, str]]:
    out = journal(f"MESSAGE_ID={Event.BOOT_MARKED_GOOD.value}", "-o", "json")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def boot_state() -> str:
    """The daemon's BootState, read with busctl: an anklumectl start (3 to 5 s
    of Python under TCG) at each look took the cores from the boot it waits for."""
    out = subprocess.run(["busctl", "--system", "--json=short", "get-property",
                          "org.anklume.Live1", "/org/anklume/Live1", "org.anklume.Live1.Manager",
                          "BootState"], capture_output=True, text=True, check=False,
                         timeout=scaled(60)).stdout
    return str(json.loads(out)["data"]) if out else ""


def test_mark_good_is_found_in_the_journal_by_its_message_id() -> None:
    # First the automatic mark at boot-complete.target, so that it cannot land
    # between the count and the call below.
    deadline = time.monotonic() + scaled(180)
    state = boot_state()
    while state != "good" and time.monotonic() < deadline:
        time.sleep(1)
        state = boot_state()
    assert state == "good", "the boot was never marked good"
    before = len(marked_good_entries())
    assert before >= 1, "the automatic mark at boot-complete.target left no entry"
    done = subprocess.run(["anklumectl", "mark-good"], capture_output=True, text=True,
                          check=False, timeout=scaled(120))
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + scaled(30)
    while len(entries := marked_good_entries()) <= before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(entries) == before + 1, "MarkGood left no entry with its MESSAGE_ID"
    entry = entries[-1]
    assert entry["_SYSTEMD_UNIT"] == "anklumed.service"
    assert (entry["SLOT"], entry["MESSAGE"]) == ("A", "slot A marked good")
    assert entry["PRIORITY"] == "6"  # info


def test_the_catalog_explains_the_event() -> None:
    listed = journal("--list-catalog", Event.BOOT_MARKED_GOOD.value)
    assert "marked good" in listed
    explained = journal("-x", f"MESSAGE_ID={Event.BOOT_MARKED_GOOD.value}")
    # journalctl -x fills the catalog's @SLOT@ from the entry's field.
    assert "Subject: anklume Live: the boot of slot A is marked good" in explained
