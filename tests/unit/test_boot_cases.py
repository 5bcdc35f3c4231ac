"""The boot decision on both sides, from the raw PERSIST files of spec/boot-cases/.

Each case is run through ``initramfs/anklume-state.sh`` under busybox sh and
dash, and through anklumed's reader (``anklumed.slots.boot_decision``): the
decision lines must be the case's ``expected`` on both, ``decide`` must write
nothing, and ``record`` (or ``fallthrough``) must leave exactly ``after/``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from anklumed.persist import PersistDir
from anklumed.slots import boot_decision
from anklumed.stick import SlotName

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "spec" / "boot-cases"
SCRIPT = ROOT / "initramfs" / "anklume-state.sh"
SHELLS = {"busybox": ["busybox", "sh"], "dash": ["dash"]}
KEYS = ("BOOT", "AB_STATE", "BOOT_COUNT", "ROLLBACK_REASON", "DEGRADED", "LAST_GOOD")
AT_PLACEHOLDER = b"AT=YYYY-MM-DDTHH:MM:SSZ\n"
AT_LINE = re.compile(rb"^AT=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n", re.M)


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if p.is_dir())


def decide_case_names() -> list[str]:
    """The cases that run decide (the others run fallthrough instead)."""
    return [n for n in case_names() if not (CASES / n / "fallthrough").exists()]


def expected(case: Path) -> dict[str, str]:
    lines = case.joinpath("expected").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def lines(output: str) -> dict[str, str]:
    found = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    return {k: found[k] for k in KEYS if k in found}


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".keep"
    }


def persist_copy(case: Path, tmp_path: Path) -> Path:
    target = tmp_path / "persist"
    shutil.copytree(case / "persist", target, symlinks=True)
    (target / ".keep").unlink(missing_ok=True)
    return target


def prepared(name: str, tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """The case, a copy of its PERSIST to work on, and that copy's files."""
    case = CASES / name
    persist = persist_copy(case, tmp_path)
    return case, persist, snapshot(persist)


def run_state(shell: str, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHELLS[shell], str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, errors="replace", timeout=30, check=False,
    )


def shell_args(case: Path, persist: Path, command: str) -> list[object]:
    if case.joinpath("fallthrough").exists():
        failed, reason = case.joinpath("fallthrough").read_text().split()
        return ["fallthrough", persist, failed, reason]
    cmdline = case / "cmdline"
    return [command, persist, *([cmdline] if cmdline.exists() else [])]


def python_lines(case: Path, persist: Path) -> dict[str, str]:
    pdir = PersistDir(persist)
    if case.joinpath("fallthrough").exists():
        failed, reason = case.joinpath("fallthrough").read_text().split()
        ft, inputs = boot_decision.decide_fall_through(pdir, SlotName(failed), reason)
        return boot_decision.as_lines(ft, inputs, reason)
    cmdline = case / "cmdline"
    decision, inputs = boot_decision.decide(
        pdir, cmdline.read_bytes() if cmdline.exists() else None
    )
    return boot_decision.as_lines(decision, inputs)


def test_cases_are_complete() -> None:
    names = case_names()
    assert len(names) >= 60
    for name in names:
        case = CASES / name
        assert set(expected(case)) == set(KEYS), name
        assert case.joinpath("persist").is_dir(), name
    reasons = {expected(CASES / n)["ROLLBACK_REASON"] for n in names}
    assert {"", "boot-count", "slot-empty", "slot-pending", "slot-failed", "verity"} <= reasons


@pytest.mark.parametrize("name", case_names())
def test_python_side(name: str, tmp_path: Path) -> None:
    case, persist, before = prepared(name, tmp_path)
    assert python_lines(case, persist) == expected(case)
    assert snapshot(persist) == before


@pytest.mark.parametrize("shell", sorted(SHELLS))
@pytest.mark.parametrize("name", decide_case_names())
def test_shell_decide(name: str, shell: str, tmp_path: Path) -> None:
    case, persist, before = prepared(name, tmp_path)
    result = run_state(shell, *shell_args(case, persist, "decide"))
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout) == expected(case)
    assert snapshot(persist) == before, "decide must write nothing"


@pytest.mark.parametrize("shell", sorted(SHELLS))
@pytest.mark.parametrize("name", case_names())
def test_shell_record(name: str, shell: str, tmp_path: Path) -> None:
    case, persist, before = prepared(name, tmp_path)
    result = run_state(shell, *shell_args(case, persist, "record"))
    assert lines(result.stdout) == expected(case)
    if case.joinpath("record-fails").exists():
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "could not write" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
    want = dict(before)
    after = case / "after"
    for f in after.rglob("*") if after.is_dir() else ():
        want[str(f.relative_to(after))] = f.read_bytes()
    got = snapshot(persist)
    if "last-rollback" in want and AT_PLACEHOLDER in want["last-rollback"]:
        assert AT_LINE.search(got.get("last-rollback", b"")), got.get("last-rollback")
        got["last-rollback"] = AT_LINE.sub(AT_PLACEHOLDER, got["last-rollback"])
    assert got == want


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_shell_decide_never_blocks_or_fails(shell: str, tmp_path: Path) -> None:
    """Inodes a raw case cannot hold: a FIFO, a device, a symlink loop, no PERSIST."""
    persist = tmp_path / "persist"
    (persist / "slots").mkdir(parents=True)
    os.mkfifo(persist / "ab-state")
    (persist / "boot-count").symlink_to("/dev/zero")
    (persist / "slots" / "A.meta").symlink_to("A.meta")
    os.mkfifo(persist / "slots" / "B.meta")
    cmdline = tmp_path / "cmdline"
    cmdline.mkdir()
    for target in (persist, tmp_path / "absent"):
        result = run_state(shell, "decide", target, cmdline)
        assert result.returncode == 0, result.stderr
        assert lines(result.stdout) == {"BOOT": "A", "AB_STATE": "A", "BOOT_COUNT": "1",
                                        "ROLLBACK_REASON": "", "DEGRADED": "1",
                                        "LAST_GOOD": ""}
