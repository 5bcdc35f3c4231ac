"""A subscription's first state is the read, never a lone change: changes
that crossed the read are kept only when the daemon sent them after it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from anklume_client.properties import Properties
from anklume_client.proxies import Job


class CrossingConnection:
    """FAKE: two PropertiesChanged arrive while GetAll is on its way, one sent
    before the reply (serial 5) and one after it (serial 9)."""

    def __init__(self) -> None:
        self.handler: Callable[[dict[str, Any], int], None] | None = None

    async def subscribe_properties(self, path: str, iface: str,
                                   handler: Callable[[dict[str, Any], int], None]
                                   ) -> Callable[[], None]:
        self.handler = handler
        return lambda: None

    async def get_all_serial(self, path: str, iface: str) -> tuple[dict[str, Any], int]:
        assert self.handler is not None
        self.handler({"Phase": "checking", "BytesDone": 1}, 5)
        self.handler({"BytesDone": 300}, 9)
        return {"Kind": "update", "State": "running", "Phase": "writing", "BytesDone": 200}, 7


def test_changes_crossing_the_first_read() -> None:
    seen: list[Properties] = []
    job = Job(CrossingConnection(), "/org/anklume/Live1/job/1")  # type: ignore[arg-type]
    asyncio.run(job.subscribe(seen.append))
    (first,) = seen  # no call with a lone change (State missing would read as finished)
    assert (first["State"], first["Phase"], first["BytesDone"]) == ("running", "writing", 300)
