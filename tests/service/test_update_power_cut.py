"""Power cut during an update: the writer dies at seeded random points.

After each death, PERSIST's files are valid, the booted slot and ab-state
are untouched unless the update had completed, and a retry succeeds. (The
VM tier cuts the power of a whole machine: tests/vm/test_update_vm.py.)
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from anklumed.persist import PersistDir
from anklumed.slots.model import SlotStatus, parse_meta, read_slots_state
from anklumed.stick import SlotName
from devtools.slowness import scaled
from tests.service.conftest import Sim
from tests.service.test_update import make_bundle

REPO = Path(__file__).resolve().parents[2]
SEED = 20261121
POINTS = 22


def run_update(sim: Sim, manifest: Path, crash_at: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.service.update_crasher",
         str(sim.workdir / "anklumed.toml"), str(manifest), str(crash_at)],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=scaled(120))


def test_a_killed_update_leaves_the_boot_alone_and_a_retry_succeeds(
        sim: Sim, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path, filler=9 << 20)  # three 4 MiB writes
    sim.stop_daemon()  # the crasher is the only writer
    original = sim.persist_files()
    pristine = {name: text for name, text in original.items() if name.endswith(
        ("ab-state", "boot-count", ".meta"))}
    full = run_update(sim, manifest, -1)
    assert full.returncode == 0, full.stderr
    events = int(full.stdout.rsplit("events=", 1)[1])
    points = sorted(random.Random(SEED).sample(range(events), min(POINTS, events)))
    assert len(points) >= 20, f"only {events} events in an update"
    for point in points:
        sim.edit_persist(pristine, remove=sim.persist_files().keys() - original.keys())
        killed = run_update(sim, manifest, point)
        assert killed.returncode == 77, (point, killed.stderr)
        # The power cut took the mount with it, as a reboot does.
        subprocess.run(["umount", sim.persist_mnt], capture_output=True, check=False)
        # What the next boot's initramfs and the next anklumed would read:
        with sim.persist_mounted() as mnt:
            state = read_slots_state(PersistDir(mnt))
        assert state.problems == (), (point, state.problems)
        b = state.meta[SlotName.B]
        if state.primary is SlotName.B:  # the update had completed
            assert (state.boot_count, b.status) == (0, SlotStatus.OK), point
        else:
            assert state.boot_count in (1, 0), point  # 0: cut between count and ab-state
            assert state.meta[SlotName.A] == parse_meta(pristine["slots/A.meta"], SlotName.A)[0]
        retried = run_update(sim, manifest, -1) if state.primary is SlotName.A else None
        if retried is not None:
            assert retried.returncode == 0, (point, retried.stderr)
            with sim.persist_mounted() as mnt:
                after = read_slots_state(PersistDir(mnt))
            assert (after.primary, after.boot_count) == (SlotName.B, 0), point
            assert after.meta[SlotName.B].status is SlotStatus.OK, point
