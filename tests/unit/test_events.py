"""The journal events: their ids, the catalog that explains them, their fields."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from systemd.journal import JournalHandler

from anklumed import events
from anklumed.events import Event

CATALOG = Path(__file__).parents[2] / "catalog" / "anklume.catalog"
ENTRY = re.compile(r"^-- ([0-9a-f]{32})$", re.MULTILINE)


def catalog_entries(text: str) -> dict[str, str]:
    """Each MESSAGE_ID of a catalog file and its text, as journalctl reads it."""
    marks = list(ENTRY.finditer(text))
    return {m.group(1): text[m.end():marks[i + 1].start() if i + 1 < len(marks) else None]
            for i, m in enumerate(marks)}


def test_every_event_is_in_the_catalog_and_nothing_else() -> None:
    text = CATALOG.read_text()
    ids = ENTRY.findall(text)
    assert len(ids) == len(set(ids)), "an id appears twice in the catalog"
    assert set(ids) == {e.value for e in Event}


def test_each_entry_has_a_subject_and_a_text() -> None:
    for message_id, body in catalog_entries(CATALOG.read_text()).items():
        headers, _, text = body.strip("\n").partition("\n\n")
        assert re.search(r"^Subject: anklume Live: \S", headers, re.MULTILINE), message_id
        assert "Defined-By: anklume" in headers, message_id
        assert len(text.split()) > 20, f"{message_id} explains nothing"


def test_ids_are_distinct_128_bit_ids() -> None:
    values = [e.value for e in Event]
    assert len(values) == len(set(values))
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in values)


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="journalctl is not installed")
def test_journalctl_compiles_the_catalog(tmp_path: Path) -> None:
    catalog_dir = tmp_path / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    (tmp_path / "var/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(CATALOG, catalog_dir)
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True,
                   capture_output=True)
    listed = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"],
                            check=True, capture_output=True, text=True).stdout
    found = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert found == {e.value for e in Event}


# ---- what reaches the journal ----

class CapturingJournal(JournalHandler):  # type: ignore[misc]
    """systemd.journal's own handler, its final send() captured instead of sent."""

    def __init__(self) -> None:
        super().__init__(SYSLOG_IDENTIFIER="anklumed")
        self.sent: list[dict[str, Any]] = []
        self.send = self._capture

    def _capture(self, MESSAGE: str, **fields: Any) -> None:  # journal.send's own name
        self.sent.append({**fields, "MESSAGE": MESSAGE})


@pytest.fixture
def journal() -> Iterator[CapturingJournal]:
    handler = CapturingJournal()
    events.log.addHandler(handler)
    events.log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        events.log.removeHandler(handler)


def test_an_event_reaches_the_journal_with_its_id_and_fields(journal: CapturingJournal) -> None:
    events.update_installed("B", "2.0", "release")
    (entry,) = journal.sent
    assert entry["MESSAGE_ID"] == Event.UPDATE_INSTALLED.value
    assert (entry["SLOT"], entry["VERSION"]) == ("B", "2.0")
    assert entry["MESSAGE"] == "slot B now holds 2.0, signed by release; it boots next"


def test_without_journald_it_is_a_plain_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="anklumed.events"):
        events.boot_marked_good("A")
    assert caplog.messages == ["slot A marked good"]


@dataclass(frozen=True)
class FakeRollback:  # FAKE: the fields of anklumed.slots.model.Rollback
    from_slot: str
    to_slot: str
    reason: str


@dataclass(frozen=True)
class FakeState:
    last_rollback: FakeRollback | None


@dataclass(frozen=True)
class FakeAssessment:
    state: str
    booted: str | None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class FakeSlots:  # FAKE: what boot_found reads of a SlotController
    assessment: FakeAssessment
    state: FakeState | None = field(default=None)


def test_a_rollback_by_the_initramfs_is_reported_with_its_reason(
        journal: CapturingJournal) -> None:
    slots = FakeSlots(FakeAssessment("rolled-back", "B"),
                      FakeState(FakeRollback("A", "B", "verity")))
    events.boot_found(slots, None)
    (entry,) = journal.sent
    assert entry["MESSAGE_ID"] == Event.ROLLED_BACK_AT_BOOT.value
    assert (entry["FROM"], entry["TO"], entry["REASON"]) == ("A", "B", "verity")


def test_a_stale_last_rollback_gives_no_reason(journal: CapturingJournal) -> None:
    slots = FakeSlots(FakeAssessment("rolled-back", "B"),
                      FakeState(FakeRollback("B", "A", "manual")))
    events.boot_found(slots, "A")
    (entry,) = journal.sent
    assert (entry["FROM"], entry["TO"], entry["REASON"]) == ("A", "B", "unknown")


def test_a_degraded_boot_is_reported_and_a_pending_one_is_not(
        journal: CapturingJournal) -> None:
    events.boot_found(FakeSlots(FakeAssessment("pending", "A")), None)
    assert journal.sent == []
    events.boot_found(FakeSlots(FakeAssessment("degraded", "A", ("no slot has attempts",))),
                      None)
    (entry,) = journal.sent
    assert entry["MESSAGE_ID"] == Event.BOOT_DEGRADED.value
    assert entry["REASON"] == "no slot has attempts"


def test_only_an_update_job_that_failed_is_an_update_failure(
        journal: CapturingJournal) -> None:
    events.job_finished("update", "succeeded", "", "")
    events.job_finished("unlock", "failed", "IncorrectPassphrase", "wrong")
    assert journal.sent == []
    events.job_finished("update", "failed", "VerificationFailed", "bad signature")
    (entry,) = journal.sent
    assert (entry["MESSAGE_ID"], entry["REASON"]) == (Event.UPDATE_FAILED.value,
                                                      "VerificationFailed")


def test_three_wrong_passphrases_pause_unlocking(journal: CapturingJournal) -> None:
    for left in (2, 1, 0):
        events.data_unlock_failed("tank", left)
    assert [e["REASON"] for e in journal.sent] == ["wrong-passphrase"] * 2 + ["paused"]
    assert {e["MESSAGE_ID"] for e in journal.sent} == {Event.DATA_UNLOCK_FAILED.value}


# Every event, raised once by its call site's function: the catalog's @FIELD@
# placeholders must be fields the event carries, or journalctl -x shows them raw.
EMITTERS: dict[Event, Callable[[], None]] = {
    Event.ROLLED_BACK_AT_BOOT: lambda: events.boot_found(
        FakeSlots(FakeAssessment("rolled-back", "B"), FakeState(FakeRollback("A", "B", "x"))),
        None),
    Event.ROLLBACK_REQUESTED: lambda: events.rollback_requested("A", "B"),
    Event.BOOT_MARKED_GOOD: lambda: events.boot_marked_good("A"),
    Event.BOOT_DEGRADED: lambda: events.boot_found(
        FakeSlots(FakeAssessment("degraded", "A", ("x",))), None),
    Event.UPDATE_INSTALLED: lambda: events.update_installed("B", "2.0", None),
    Event.UPDATE_FAILED: lambda: events.job_finished("update", "failed", "Failed", "x"),
    Event.DATA_UNLOCK_FAILED: lambda: events.data_unlock_failed("tank", 2),
    Event.DATA_DISK_PULLED: lambda: events.data_disk_pulled("tank"),
}


@pytest.mark.parametrize("event", list(Event), ids=lambda e: e.name)
def test_the_catalog_names_only_fields_the_event_carries(
        event: Event, journal: CapturingJournal) -> None:
    EMITTERS[event]()
    (entry,) = journal.sent
    assert entry["MESSAGE_ID"] == event.value
    entry_text = catalog_entries(CATALOG.read_text())[event.value]
    placeholders = set(re.findall(r"@([A-Z_]+)@", entry_text))
    assert placeholders <= set(entry), f"{event.name}: {placeholders - set(entry)} not sent"


def test_under_systemd_the_journal_message_is_the_sentence_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from anklumed.main import _setup_logging

    monkeypatch.setenv("INVOCATION_ID", "0" * 32)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers = []  # basicConfig only configures a root logger without handlers
    try:
        _setup_logging("info")
        (handler,) = root.handlers
        assert isinstance(handler, JournalHandler)
        sent: list[dict[str, Any]] = []
        handler.send = lambda MESSAGE, **fields: sent.append({**fields, "MESSAGE": MESSAGE})
        events.boot_marked_good("B")
    finally:
        root.handlers, level = saved
        root.setLevel(level)
    (entry,) = sent
    assert (entry["MESSAGE"], entry["MESSAGE_ID"]) == ("slot B marked good",
                                                       Event.BOOT_MARKED_GOOD.value)
