"""An update run the way anklumed runs it, without the bus (tests and benches).

The daemon's own classes do the work: discovery of the stick from the boot
hand-off, the PERSIST store, the slot controller and the Updater. Only the
D-Bus layer and polkit are left out. ``on_event(job, event)`` is called
before each progress report (event: the phase) and each step of a PERSIST
write (event: "persist:" and the step), in order: the power-cut tests die
there, the cancel tests cancel there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from anklumed import stick
from anklumed.config import load_config
from anklumed.handoff import read_handoff
from anklumed.jobs import Job
from anklumed.persist import PersistStore
from anklumed.slots.controller import SlotController
from anklumed.slots.update import Updater, UpdateRequest


async def run_update(config_path: Path, request: UpdateRequest,
                     on_event: Callable[[Job, str], None] = lambda _job, _event: None) -> str:
    config = load_config(config_path)
    handoff = read_handoff(config.handoff, config.cmdline)
    found = await asyncio.to_thread(stick.discover, config.boot_disk or handoff.boot_disk,
                                    handoff.persist_partuuid)
    store = PersistStore(found.persist.device, config.persist_mountpoint)
    slots = SlotController(store, handoff, None)
    await slots.start()
    job = Job(1, "update", asyncio.get_running_loop(), lambda _job: None)
    store.step_hook = lambda step: on_event(job, f"persist:{step}")
    report = job.progress

    def progress(phase: str, done: int = 0, total: int = 0) -> None:
        on_event(job, phase)
        report(phase, done, total)

    job.progress = progress  # type: ignore[method-assign]
    updater = Updater(slots, lambda: found, handoff.slot, config.compatible, config.keys_dir,
                      lambda: datetime.now(UTC), config.http_settings(), config.kernel_machine())
    return await updater.run(job, request)
