"""dbus/org.anklume.Live1.xml is exactly what the daemon exports."""

import asyncio
from pathlib import Path

from devtools.interface_xml import exported
from tests.service.conftest import Sim

XML = Path(__file__).resolve().parents[2] / "dbus" / "org.anklume.Live1.xml"


def test_interface_xml_matches_the_daemon(sim: Sim) -> None:
    live = asyncio.run(exported(sim.bus.address))
    assert live == XML.read_text(), (
        "the exported interface changed: regenerate with "
        "python -m devtools.interface_xml ADDRESS > dbus/org.anklume.Live1.xml"
    )
