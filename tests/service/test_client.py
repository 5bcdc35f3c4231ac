"""anklume_client against the real anklumed: revision-2 members beside the
old ones, and a job followed by its signals, not by polling."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from anklume_client.connection import Connection
from anklume_client.models import JobState
from anklume_client.properties import Properties
from anklume_client.proxies import DataDisk, Manager
from devtools.bundle_server import Faults, serving
from devtools.slowness import scaled
from tests.service.conftest import Sim
from tests.service.test_update import make_bundle
from tests.service.test_update_http import IMAGE_FILLER, fast_downloads


class CountingConnection(Connection):
    """Counts the properties it reads (GetAll): polling would read many."""

    reads = 0

    async def get_all_serial(self, path: str, iface: str) -> tuple[dict[str, Any], int]:
        self.reads += 1
        return await super().get_all_serial(path, iface)


async def probed(conn: Connection) -> Properties:
    for _ in range(100):
        props = await DataDisk(conn).properties()
        if props["DisksProbed"]:
            return props
        await asyncio.sleep(0.1)
    raise AssertionError("anklumed never probed the disks")


async def test_revision_2_members_stand_beside_the_old_ones(sim: Sim) -> None:
    sim.edit_persist({"boot-count": "many\n"})  # a problem to see coded
    sim.restart_daemon()
    conn = await Connection.connect(sim.bus.address)
    try:
        manager, data = await Manager(conn).properties(), await probed(conn)
        status = await Manager(conn).status()
    finally:
        await conn.close()
    assert not manager.missing and not data.missing and status.revision == 3
    assert len(manager["StateReasonCodes"]) == len(manager["StateReasons"])
    assert len(manager["ProblemCodes"]) == len(manager["Problems"]) > 0
    assert "persist-damaged" in manager["ProblemCodes"]
    assert [[r["label"], r["number"], r["size"], r["device"]]
            for r in manager["PartitionRecords"]] == manager["Partitions"]
    assert [(r["name"], r["device"], r["size"], "; ".join(r["contents"]), r["refused"])
            for r in data["CandidateDisks"]] == [
        (c[0], c[1], c[3], c[6], c[7]) for c in data["Candidates"]]
    assert sim.stick is not None
    stick = [r for r in data["CandidateDisks"] if r["device"] == str(sim.stick.loop)]
    assert [r["refused_code"] for r in stick] == ["boot-stick"]


async def test_a_job_is_followed_by_its_signals(sim: Sim, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path, filler=IMAGE_FILLER)
    fast_downloads(sim)
    # A stall past the first write keeps the job running long enough to be followed.
    faults = Faults(stall_at=[(5 << 20) + i for i in range(2)], stall_seconds=2)
    seen: list[str] = []
    with serving(manifest.parent, faults) as server:
        conn = await CountingConnection.connect(sim.bus.address)
        try:
            job = await Manager(conn).update(f"{server.url}/{manifest.name}", "", False)
            end = await job.follow(lambda status: seen.append(status.phase))
        finally:
            await conn.close()  # a followed job leaves the connection closable
    assert end.state == JobState.SUCCEEDED, end.message
    assert "slot B" in end.result and end.error_code == ""
    assert "writing" in seen and "verifying" in seen
    assert conn.reads == 1  # read once after subscribing; every change came as a signal


async def test_a_subscription_hears_each_change(sim: Sim) -> None:
    conn = await Connection.connect(sim.bus.address)
    states: list[str] = []
    good = asyncio.Event()

    def on_change(props: Properties) -> None:
        states.append(props["BootState"])
        if props["BootState"] == "good":
            good.set()

    try:
        undo = await Manager(conn).subscribe(on_change)
        await Manager(conn).mark_good()  # root: polkit is not asked
        await asyncio.wait_for(good.wait(), scaled(10))
        undo()
    finally:
        await conn.close()
    assert states[0] == "pending" and states[-1] == "good"


async def test_a_subscription_made_after_anklumed_restarted_hears_the_new_one(sim: Sim) -> None:
    # The tray keeps its connection across a quick restart of anklumed: what
    # it follows afterwards (an update's progress and end) must be heard from
    # the new daemon, not awaited from the old one's name.
    conn = await Connection.connect(sim.bus.address)
    good = asyncio.Event()

    def on_change(props: Properties) -> None:
        if props["BootState"] == "good":
            good.set()

    try:
        (await Manager(conn).subscribe(lambda _props: None))()  # the daemon as it was
        await asyncio.to_thread(sim.restart_daemon)
        undo = await Manager(conn).subscribe(on_change)
        await Manager(conn).mark_good()  # root: polkit is not asked
        await asyncio.wait_for(good.wait(), scaled(10))
        undo()
    finally:
        await conn.close()
