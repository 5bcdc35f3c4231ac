"""dbus/org.anklume.Live1.xml is exactly what the daemon exports."""

import asyncio
import os
from pathlib import Path

from devtools.interface_xml import exported
from tests.service.conftest import Sim
from tests.service.update_caller import update_path

XML = Path(__file__).resolve().parents[2] / "dbus" / "org.anklume.Live1.xml"


def test_interface_xml_matches_the_daemon(sim: Sim, tmp_path: Path) -> None:
    # A job object exists once a job ran: run a (refused) update to get one.
    answer = asyncio.run(update_path(sim.bus.address, str(tmp_path / "none.manifest")))
    assert answer[0] == "NotFound"  # reported by the job
    (job,) = sim.status()["Jobs"]
    live = asyncio.run(exported(sim.bus.address, job))
    if os.environ.get("ANKLUME_WRITE_XML") == "1":
        XML.write_text(live)
    assert live == XML.read_text(), (
        "the exported interface changed: regenerate with "
        "ANKLUME_WRITE_XML=1 ./run-tests tests/service/test_interface_xml.py"
    )
