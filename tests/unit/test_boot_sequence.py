"""Ten failed boots in a row: the slots booted, with both sides agreeing.

A boot here is what the initramfs does: ``anklume-state.sh record``, then, if
the chosen slot fails its checks, ``fallthrough``. No boot is ever marked
good, so every attempt fails. The sequence must settle on one slot instead of
the A<->B ping-pong of a rollback every three boots.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from anklumed.persist import PersistDir
from anklumed.slots import boot_decision
from anklumed.stick import SlotName

SCRIPT = Path(__file__).resolve().parents[2] / "initramfs" / "anklume-state.sh"
OLD = "2026-11-01T10:00:00Z"
NEW = "2026-11-20T08:30:00Z"


def state(tmp_path: Path, primary: str, good_a: str | None, good_b: str | None) -> Path:
    persist = tmp_path / "persist"
    (persist / "slots").mkdir(parents=True)
    (persist / "ab-state").write_text(primary + "\n")
    (persist / "boot-count").write_text("0\n")
    for slot, good in (("A", good_a), ("B", good_b)):
        text = "STATUS=ok\n" + (f"LAST_GOOD_AT={good}\n" if good else "")
        (persist / "slots" / f"{slot}.meta").write_text(text)
    return persist


def run(*args: object) -> dict[str, str]:
    result = subprocess.run(
        ["busybox", "sh", str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def boot(persist: Path, fails_checks: frozenset[str]) -> str:
    """One boot; returns the slot that ran ("" if none could)."""
    pdir = PersistDir(persist)
    decision, inputs = boot_decision.decide(pdir)
    shell = run("record", persist)
    assert {k: shell[k] for k in boot_decision.as_lines(decision, inputs)} == (
        boot_decision.as_lines(decision, inputs)
    )
    slot = shell["BOOT"]
    if slot in fails_checks:
        ft, inputs = boot_decision.decide_fall_through(pdir, SlotName(slot), "verity")
        shell = run("fallthrough", persist, slot, "verity")
        want = boot_decision.as_lines(ft, inputs, "verity")
        assert {k: shell[k] for k in want} == want
        slot = shell["BOOT"]
        assert slot not in fails_checks
    return slot


@pytest.mark.parametrize(
    ("primary", "good_a", "good_b", "fails_checks", "expected"),
    [
        # An update to B that never boots well: three tries, back to A, three
        # tries, then A (the last good) for good, never B again.
        ("B", OLD, None, frozenset(), "BBBAAAAAAA"),
        # Both were good once, B last: after both are exhausted, B (last good).
        ("B", OLD, NEW, frozenset(), "BBBAAABBBB"),
        # Never marked good at all: stay on the slot reached by the rollback.
        ("A", None, None, frozenset(), "AAABBBBBBB"),
        # A fails dm-verity every time: B at once, and B ever after (A's
        # degraded last-good tries fall through to B without writing).
        ("A", OLD, None, frozenset({"A"}), "BBBBBBBBBB"),
    ],
)
def test_ten_failed_boots(
    tmp_path: Path,
    primary: str, good_a: str | None, good_b: str | None,
    fails_checks: frozenset[str], expected: str,
) -> None:
    persist = state(tmp_path, primary, good_a, good_b)
    booted = "".join(boot(persist, fails_checks) for _ in range(10))
    assert booted == expected
