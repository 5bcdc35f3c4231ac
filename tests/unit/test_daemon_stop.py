"""The daemon's stop(): its methods are refused from its first line, before
the core ends its jobs (boundary.RefuseWhileStopping answers them)."""

from __future__ import annotations

from typing import cast

from anklumed.core.system import LiveSystem
from anklumed.service.app import Daemon


class Core:
    def __init__(self) -> None:
        self.daemon: Daemon | None = None
        self.refusing_while_stopping: bool | None = None

    async def stop(self) -> None:
        assert self.daemon is not None
        self.refusing_while_stopping = self.daemon.stopping


async def test_methods_are_refused_before_the_core_stops() -> None:
    core = Core()
    daemon = Daemon(cast(LiveSystem, core))
    core.daemon = daemon
    assert not daemon.stopping
    await daemon.stop()
    assert core.refusing_while_stopping is True
