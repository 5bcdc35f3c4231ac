"""What the guide's screens share: the app's daemon connection."""

from __future__ import annotations

import asyncio

from textual.screen import Screen

from anklume_desktop.daemon import Daemon, DataDisk

PROBE_WAIT = 0.5  # the daemon's first disk probe after start is quick
PROBE_TRIES = 40


async def daemon_of(screen: Screen[None]) -> Daemon:
    from anklume_desktop.guide.app import GuideApp

    app = screen.app
    assert isinstance(app, GuideApp)
    return await app.daemon()



async def probed_data(daemon: Daemon) -> DataDisk:
    """The data disk once anklumed has looked at the disks (or after 20 s):
    right after it starts it knows none yet, and the guide opens at the first
    login, then; an empty list must not read as "no disk"."""
    data = await daemon.data_disk()
    for _ in range(PROBE_TRIES):
        if data.probed:
            break
        await asyncio.sleep(PROBE_WAIT)
        data = await daemon.data_disk()
    return data
