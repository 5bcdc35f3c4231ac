"""Guest side of the whole-machine power cut (tests/vm/test_update_power_cut.py).

    python -m tests.vm.power_cut_guest MANIFEST KEYS_DIR

Reads what the last boot (perhaps cut mid-update) left on the stick and
reports it to the run directory (report.json), then updates slot B again,
saying "UPDATE-START" on the console just before, so the host can cut the
power at a chosen moment after it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from anklumed import stick
from anklumed.persist import PersistStore
from anklumed.slots import model
from anklumed.slots.update import UpdateRequest
from anklumed.stick import SlotName
from devtools.update_direct import run_update
from devtools.vm import guestctl

SERIAL = "anklume-stick"
REPORT = guestctl.RUNDIR / "report.json"


def inspect(persist: Path, work: Path) -> dict[str, object]:
    """The state as the next boot's initramfs would read it; a finished
    update is undone (slot A made primary again) so the next can run."""
    store = PersistStore(persist, work / "inspect")
    with store.transaction() as pdir:
        state = model.read_slots_state(pdir)
        report: dict[str, object] = {
            "problems": list(state.problems), "primary": state.primary.value,
            "boot_count": state.boot_count,
            "status": {s.value: state.meta[s].status.value for s in SlotName},
            "version_a": state.meta[SlotName.A].version}
        if state.primary is SlotName.B:
            model.write_primary(pdir, SlotName.A, 1)
    return report


def main(manifest: str, keys_dir: str) -> int:
    disk = guestctl.wait_disk(SERIAL)
    assert disk is not None
    found = stick.discover(disk)
    work = Path("/tmp/power-cut")
    work.mkdir()
    (work / "boot.env").write_text(f"SLOT=A\nBOOT_COUNT=1\nBOOT_DISK={disk}\n")
    (work / "cmdline").write_text("quiet\n")
    config = work / "anklumed.toml"
    config.write_text(f'persist_mountpoint = "{work / "persist"}"\n'
                      f'handoff = "{work / "boot.env"}"\ncmdline = "{work / "cmdline"}"\n'
                      f'keys_dir = "{keys_dir}"\n')
    assert found.persist.device is not None
    report = inspect(found.persist.device, work)
    REPORT.write_text(json.dumps(report))
    print("UPDATE-START", flush=True)
    message = asyncio.run(run_update(config, UpdateRequest(manifest)))
    print("UPDATE-DONE", message, flush=True)
    REPORT.write_text(json.dumps({**report, "done": message}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
