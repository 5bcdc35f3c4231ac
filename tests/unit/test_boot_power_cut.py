"""A power cut between any two of record's writes leaves a state that boots well.

Each write is atomic (tmp, fsync, rename, fsync dir), so a cut between two
writes is the state after the first ones. It is made here by a directory in
the way of the next write's NAME.tmp: record stops there, as the power would.
Then the directory goes (a real cut leaves at most a file, which the next
write truncates) and the next boot runs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "initramfs" / "anklume-state.sh"
SHELLS = {"busybox": ["busybox", "sh"], "dash": ["dash"]}
GOOD = "2026-11-01T10:00:00Z"


def record(shell: str, persist: Path) -> tuple[int, dict[str, str]]:
    result = subprocess.run([*SHELLS[shell], str(SCRIPT), "record", str(persist)],
                            capture_output=True, text=True, timeout=30, check=False)
    return result.returncode, dict(x.split("=", 1) for x in result.stdout.splitlines())


def exhausted_a(tmp_path: Path) -> Path:
    """Slot A has used its three attempts; B is ok: this boot rolls back to B."""
    persist = tmp_path / "persist"
    (persist / "slots").mkdir(parents=True)
    (persist / "ab-state").write_text("A\n")
    (persist / "boot-count").write_text("3\n")
    (persist / "slots" / "A.meta").write_text(f"STATUS=ok\nLAST_GOOD_AT={GOOD}\n")
    (persist / "slots" / "B.meta").write_text("STATUS=ok\n")
    return persist


def files(persist: Path) -> dict[str, str]:
    return {n: persist.joinpath(n).read_text() for n in ("ab-state", "boot-count")}


@pytest.mark.parametrize("shell", sorted(SHELLS))
@pytest.mark.parametrize(("cut_before", "next_boot", "after_next"), [
    # Nothing written: the next boot is this boot again.
    ("last-rollback", "B", {"ab-state": "B\n", "boot-count": "1\n"}),
    # Only last-rollback (FROM=A TO=B): alone it changes nothing; the
    # rollback is made again, whole.
    ("boot-count", "B", {"ab-state": "B\n", "boot-count": "1\n"}),
    # last-rollback and boot-count=1, ab-state still A: A gets fresh attempts
    # (a few more tries of a tried slot), never B with A's spent count.
    ("ab-state", "A", {"ab-state": "A\n", "boot-count": "2\n"}),
])
def test_a_cut_between_writes(tmp_path: Path, shell: str, cut_before: str,
                              next_boot: str, after_next: dict[str, str]) -> None:
    persist = exhausted_a(tmp_path)
    blocker = persist / f"{cut_before}.tmp"
    blocker.mkdir()
    rc, decision = record(shell, persist)
    assert rc == 1 and decision["BOOT"] == "B"
    blocker.rmdir()

    rc, decision = record(shell, persist)
    assert rc == 0
    assert decision["BOOT"] == next_boot
    assert files(persist) == after_next
    assert not list(persist.rglob("*.tmp"))


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_no_cut(tmp_path: Path, shell: str) -> None:
    persist = exhausted_a(tmp_path)
    rc, decision = record(shell, persist)
    assert (rc, decision["BOOT"], decision["ROLLBACK_REASON"]) == (0, "B", "boot-count")
    assert files(persist) == {"ab-state": "B\n", "boot-count": "1\n"}
    assert "FROM=A\nTO=B\n" in persist.joinpath("last-rollback").read_text()


def test_each_write_is_tmp_fsync_rename_fsync_dir(tmp_path: Path) -> None:
    """The system calls busybox makes for record's writes, in order."""
    persist = exhausted_a(tmp_path)
    trace = subprocess.run(
        ["strace", "-f", "-y", "-qq", "-e", "signal=none", "-e",
         "trace=fsync,rename,renameat,renameat2", "busybox", "sh", str(SCRIPT), "record",
         str(persist)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stderr
    calls = [re.sub(r"^\[pid +\d+\] ", "", line).replace(str(persist), "P")
             for line in trace.splitlines() if "= 0" in line]
    expected = []
    for name in ("last-rollback", "boot-count", "ab-state"):
        expected += [f"fsync(3<P/{name}.tmp>) = 0", f'rename("P/{name}.tmp", "P/{name}") = 0',
                     "fsync(3<P>) = 0"]
    assert calls == expected
