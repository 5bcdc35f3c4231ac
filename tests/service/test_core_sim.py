"""The core on a real simulated stick, without any bus.

anklumed.core.system.LiveSystem is given the simulator's configuration and
driven directly: stick discovery from the GPT, PERSIST mounted per
transaction (real ext4 on a loop device), the stick pulled.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from anklumed.config import load_config
from anklumed.core.snapshots import ManagerSnapshot
from anklumed.core.system import LiveSystem
from anklumed.slots.assessment import BootState
from anklumed.stick import SlotName
from devtools import stickimg
from tests.service.conftest import Sim


def test_the_core_marks_a_real_stick_good_and_sees_it_pulled(tmp_path: Path) -> None:
    sim = Sim(tmp_path / "sim")
    sim.workdir.mkdir(parents=True)
    try:
        sim.stick = stick = stickimg.build(sim.workdir / "stick", slot_mib=sim.slot_mib)
        sim.write_handoff()
        core = LiveSystem(load_config(sim.workdir / "anklumed.toml"))

        async def mark_good() -> ManagerSnapshot:
            await core.start()
            before = core.manager()
            await core.mark_good()
            return before

        before = asyncio.run(mark_good())
        assert before.boot_disk == str(stick.loop) and before.media_present
        assert before.boot.state is BootState.PENDING and before.boot_count == 1
        assert not core.store.busy and not Path(sim.persist_mnt).is_mount()
        after = core.manager()
        assert after.boot.state is BootState.GOOD and after.boot_count == 0
        files = sim.persist_files()
        assert files["boot-count"].strip() == "0"
        assert "LAST_GOOD_AT=" in files["slots/A.meta"]
        assert core.slot(SlotName.A).device == str(stick.part(2))

        stick.detach()
        sim.stick = None  # detached once: its loop number may be someone else's now
        asyncio.run(core._look_at_media())
        pulled = core.manager()
        assert not pulled.media_present and pulled.safe_to_remove
    finally:
        sim.stop()
