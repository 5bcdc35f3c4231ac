"""The docs/ pages stay true to what they can be checked against mechanically."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from anklume_client import words
from anklumed.data.disks import Refusal
from anklumed.data.manager import MessageCode
from anklumed.errors import ErrorCode
from anklumed.events import Event
from anklumed.problems import ProblemCode
from anklumed.slots.assessment import ReasonCode

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
INTERFACE_XML = ROOT / "dbus" / "org.anklume.Live1.xml"


def xml_members() -> dict[str, set[str]]:
    """Each interface of the XML and the names of its methods, properties, signals."""
    tree = ET.parse(INTERFACE_XML)  # noqa: S314 (the repository's own file)
    return {iface.attrib["name"]: {m.attrib["name"] for m in iface
                                   if m.tag in ("method", "property", "signal")}
            for iface in tree.getroot().iter("interface")}


def documented_members() -> dict[str, set[str]]:
    """Each ``## interface`` section of docs/dbus.md and the names in its table's
    first column."""
    sections = re.split(r"^## ", (DOCS / "dbus.md").read_text(), flags=re.MULTILINE)[1:]
    found: dict[str, set[str]] = {}
    for section in sections:
        title, _, body = section.partition("\n")
        if title.startswith("org."):  # not "## Codes"
            found[title.strip()] = set(re.findall(r"^\| `(\w+)` \|", body, re.MULTILINE))
    return found


def documented_codes() -> dict[str, list[str]]:
    """Each ``### list`` of docs/dbus.md's "## Codes" and the codes of its table."""
    codes = (DOCS / "dbus.md").read_text().split("\n## Codes\n", 1)[1]
    found: dict[str, list[str]] = {}
    for section in re.split(r"^### ", codes, flags=re.MULTILINE)[1:]:
        title, _, body = section.partition("\n")
        found[title.strip()] = re.findall(r"^\| `([a-z0-9-]+)` \|", body, re.MULTILINE)
    return found


# Each list of codes and where the daemon defines it (the one definition).
DAEMON_CODES: dict[str, list[str]] = {
    "StateReasonCodes": [c.value for c in ReasonCode],
    "ProblemCodes": [c.value for c in ProblemCode],
    "ErrorCode": [c.value for c in ErrorCode],
    "MessageCode": [c.value for c in MessageCode],
    "refused_code": [c.value for c in Refusal],
}


def test_the_codes_tables_are_the_daemons_codes() -> None:
    assert documented_codes() == DAEMON_CODES


# The client library's plain words for each list (anklume_client/words.py).
CLIENT_WORDS: dict[str, dict[str, str]] = {
    "StateReasonCodes": words.REASONS, "ProblemCodes": words.PROBLEMS,
    "ErrorCode": words.ERRORS, "MessageCode": words.MESSAGES, "refused_code": words.REFUSALS,
}


@pytest.mark.parametrize("kind", sorted(DAEMON_CODES))
def test_the_client_has_plain_words_for_every_code(kind: str) -> None:
    assert sorted(CLIENT_WORDS[kind]) == sorted(DAEMON_CODES[kind])
    assert all(sentence and sentence[0].islower() and not sentence.endswith(".")
               for sentence in CLIENT_WORDS[kind].values())


def test_every_refusal_has_its_job_error_code() -> None:
    assert {r.error_code.value for r in Refusal} <= set(DAEMON_CODES["ErrorCode"])


def test_the_xml_has_members_to_check() -> None:
    members = xml_members()
    assert "MarkGood" in members["org.anklume.Live1.Manager"]
    assert "Finished" in members["org.anklume.Live1.Job"]


@pytest.mark.parametrize("interface", sorted(xml_members()))
def test_every_member_of_the_interface_is_documented(interface: str) -> None:
    documented = documented_members()
    assert interface in documented, f"docs/dbus.md has no section '## {interface}'"
    missing = xml_members()[interface] - documented[interface]
    assert not missing, f"docs/dbus.md does not document {interface}: {sorted(missing)}"


def test_the_doc_names_nothing_the_interface_lacks() -> None:
    members = xml_members()
    for interface, names in documented_members().items():
        assert interface in members, f"docs/dbus.md documents an unknown {interface}"
        extra = names - members[interface]
        assert not extra, f"docs/dbus.md documents {interface} members that do not exist: {extra}"


def test_every_journal_event_is_documented() -> None:
    text = (DOCS / "events.md").read_text()
    for event in Event:
        assert re.search(rf"^\| `{event.name}` \| `{event.value}` \|", text, re.MULTILINE), \
            event.name


def test_every_page_is_in_the_index_and_every_link_resolves() -> None:
    index = (DOCS / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
