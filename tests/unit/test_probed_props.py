"""anklumectl waits for anklumed's first probe of the disks before it reads
the disk lists (first-boot runs right after the daemon starts)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from anklume_client.interface import DATA_PATH
from anklumectl import data
from anklumectl.client import ClientError


class FakeDaemon:
    """FAKE: answers the DataDisk GetAll the way anklumed does, not probed
    for the first ``unprobed`` reads."""

    def __init__(self, unprobed: int) -> None:
        self.unprobed = unprobed
        self.reads = 0

    async def call(self, path: str, iface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, mutating: bool = False) -> list[Any]:
        assert (path, member, body) == (DATA_PATH, "GetAll", [data.DATA_IFACE])
        self.reads += 1
        probed = self.reads > self.unprobed
        return [{"State": "absent", "DisksProbed": probed,
                 "Candidates": [["sdb", "/dev/sdb"]] if probed else []}]


def test_the_lists_are_read_once_the_disks_are_probed() -> None:
    daemon = FakeDaemon(unprobed=3)
    props = asyncio.run(data.probed_props(daemon))  # type: ignore[arg-type]
    assert props["DisksProbed"] and props["Candidates"] == [["sdb", "/dev/sdb"]]
    assert daemon.reads == 4


def test_a_daemon_that_never_finishes_probing_is_not_waited_for_forever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "PROBE_WAIT", 0.5)
    daemon = FakeDaemon(unprobed=10**6)
    props = asyncio.run(data.probed_props(daemon))  # type: ignore[arg-type]
    assert not props["DisksProbed"] and props["Candidates"] == []
    assert 2 <= daemon.reads <= 5


def test_no_disk_is_not_claimed_before_the_disks_were_looked_at() -> None:
    with pytest.raises(ClientError) as busy:
        data.require_probed({"DisksProbed": False})
    assert busy.value.name.endswith(".Busy") and "try again" in busy.value.message
    data.require_probed({"DisksProbed": True})  # probed: nothing to say
