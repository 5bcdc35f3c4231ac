"""anklume_client knows exactly the interface of dbus/org.anklume.Live1.xml:
every method, property and signal with its signature, and nothing more."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from enum import StrEnum
from pathlib import Path

import pytest

from anklume_client.interface import INTERFACES, Interface

XML = Path(__file__).resolve().parents[2] / "dbus" / "org.anklume.Live1.xml"


def xml_interfaces() -> dict[str, ET.Element]:
    tree = ET.parse(XML)  # noqa: S314 (the repository's own file)
    return {iface.attrib["name"]: iface for iface in tree.getroot().iter("interface")}


def args(member: ET.Element, direction: str) -> str:
    # A signal's args are all "out" (or have no direction).
    return "".join(a.attrib["type"] for a in member.iter("arg")
                   if a.attrib.get("direction", "out") == direction)


def test_the_library_knows_each_interface_of_the_xml() -> None:
    assert sorted(i.name for i in INTERFACES) == sorted(xml_interfaces())


@pytest.mark.parametrize("known", INTERFACES, ids=lambda i: i.name.rsplit(".", 1)[-1])
def test_every_member_and_signature_matches_the_xml(known: Interface) -> None:
    iface = xml_interfaces()[known.name]
    assert known.properties == {p.attrib["name"]: p.attrib["type"]
                                for p in iface.iter("property")}
    assert known.methods == {m.attrib["name"]: (args(m, "in"), args(m, "out"))
                             for m in iface.iter("method")}
    assert known.signals == {s.attrib["name"]: args(s, "out") for s in iface.iter("signal")}
    members = {*known.properties, *known.methods, *known.signals}
    assert set(known.added) <= members and all(r > 1 for r in known.added.values())


def test_the_client_enums_are_the_daemons() -> None:
    from anklume_client import models, words
    from anklumed import jobs
    from anklumed.data import manager
    from anklumed.handoff import VerityState
    from anklumed.service.objects import JOB_ACTIONS
    from anklumed.slots import assessment
    from anklumed.slots import model as slot_model

    def values(enum: type[StrEnum]) -> list[str]:
        return sorted(e.value for e in enum)

    assert values(models.BootState) == values(assessment.BootState) == sorted(words.BOOT_STATES)
    # "unknown": the Slot's Status when PERSIST cannot be read (not a state file value)
    assert values(models.SlotStatus) == sorted([*values(slot_model.SlotStatus), "unknown"])
    assert values(models.SlotStatus) == sorted(words.SLOT_STATUSES)
    assert values(models.DataState) == values(manager.DataState) == sorted(words.DATA_STATES)
    assert values(models.JobState) == values(jobs.JobState) == sorted(words.JOB_STATES)
    assert sorted(words.INTEGRITY) == values(VerityState)
    assert values(models.JobKind) == sorted(JOB_ACTIONS)
