"""SlotName.parse: the one reading of a slot name, and every reader using it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from anklumed.errors import InvalidArgument
from anklumed.handoff import parse_handoff
from anklumed.service.objects import parse_slot_arg
from anklumed.slots import model
from anklumed.slots.boot_decision import forced_slot
from anklumed.stick import SlotName

STATE_SH = Path(__file__).resolve().parents[2] / "initramfs" / "anklume-state.sh"
NAMES = {"A": SlotName.A, "a": SlotName.A, "B": SlotName.B, "b": SlotName.B}
NOT_NAMES = ["", " a", "b ", "A\n", "AB", "C", "slot A", "\u0410", "\uff21", "a\0", "-"]


@pytest.mark.parametrize("text", list(NAMES))
def test_one_letter_either_case(text: str) -> None:
    assert SlotName.parse(text) is NAMES[text]


@pytest.mark.parametrize("text", NOT_NAMES)
def test_nothing_else_is_a_slot(text: str) -> None:
    assert SlotName.parse(text) is None


# An argv cannot carry a NUL: those names are not asked of the shell.
@pytest.mark.parametrize("text", [t for t in [*NAMES, *NOT_NAMES] if "\0" not in t])
def test_the_initramfs_reads_names_alike(text: str, tmp_path: Path) -> None:
    # slot-info refuses (status 2) exactly what is not a slot name.
    shell = shutil.which("dash") or "sh"
    done = subprocess.run([shell, str(STATE_SH), "slot-info", str(tmp_path), text],
                          capture_output=True, text=True, check=False)
    assert (done.returncode != 2) is (SlotName.parse(text) is not None), done.stderr


@pytest.mark.parametrize("text", [*NAMES, *NOT_NAMES])
def test_every_reader_agrees(text: str) -> None:
    expected = SlotName.parse(text)
    if "\n" not in text and "\0" not in text:
        # Values of KEY=value files are trimmed by parse_kv, as by the shell's
        # kv_load: quoted, the text reaches the parser as it is.
        quoted = f'"{text}"'
        assert parse_handoff(f"SLOT={quoted}\n", "").slot is expected
        rollback, _ = model.parse_rollback(f"FROM={quoted}\nTO={quoted}\n")
        assert (rollback.from_slot if rollback else None) is expected
    if text and not any(c.isspace() for c in text):
        assert forced_slot(f"quiet anklume.slot={text}".encode()) is expected
        assert parse_handoff(None, f"anklume.slot={text}").slot is expected
    if expected is None:
        with pytest.raises(InvalidArgument, match="A or B"):
            parse_slot_arg(text)
    else:
        assert parse_slot_arg(text) is expected


@pytest.mark.parametrize(("text", "expected"), [("a\n", SlotName.A), ("  B \n\n", SlotName.B),
                                                ("A B", None), ("ab", None)])
def test_ab_state_is_read_trimmed(text: str, expected: SlotName | None) -> None:
    slot, problems = model.parse_slot_name(text)
    assert slot is (expected or model.DEFAULT_SLOT)
    assert bool(problems) is (expected is None)
