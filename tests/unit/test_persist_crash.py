"""A process killed at every step of a PERSIST write (on a plain directory:
no root) leaves files that read without a problem."""

import subprocess
import sys
from pathlib import Path

from anklumed.persist import WRITE_STEPS, PersistDir
from anklumed.stick import SlotName

REPO = Path(__file__).resolve().parents[2]

CRASHER = """
import os, sys
from pathlib import Path
from anklumed.persist import PersistDir
from anklumed.slots import model
from anklumed.stick import SlotName
target = int(sys.argv[2]); seen = [0]
def hook(step):
    if seen[0] == target:
        os._exit(77)  # a crash: no cleanup, no finally
    seen[0] += 1
pdir = PersistDir(Path(sys.argv[1]), step_hook=hook)
state = model.read_slots_state(pdir)
model.write_primary(pdir, SlotName.B, 0)
model.write_meta(pdir, SlotName.A, state.meta[SlotName.A].model_copy(update={"version": "2"}))
"""


def test_crash_at_every_step_of_a_persist_write_leaves_valid_files(tmp_path: Path) -> None:
    steps = 3 * len(WRITE_STEPS)  # three files are written
    for k in range(steps + 1):
        root = tmp_path / f"crash-{k}"
        (root / "slots").mkdir(parents=True)
        (root / "ab-state").write_text("A\n")
        (root / "boot-count").write_text("2\n")
        (root / "slots" / "A.meta").write_text("STATUS=ok\nVERSION=1\n")
        proc = subprocess.run([sys.executable, "-c", CRASHER, str(root), str(k)], cwd=REPO,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == (77 if k < steps else 0), proc.stderr
        from anklumed.slots.model import read_slots_state
        state = read_slots_state(PersistDir(root))
        assert state.problems == (), (k, state.problems)
        assert (state.primary.value, state.boot_count) in {("A", 2), ("A", 0), ("B", 0)}
        assert state.meta[SlotName.A].version in ("1", "2")
        # The next writer removes what the crash left behind.
        PersistDir(root).clean_temporaries()
        assert not list(root.rglob("*.tmp"))
