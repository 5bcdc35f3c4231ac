"""PERSIST files: every malformed input becomes a reported problem and a safe default."""

from pathlib import Path

import pytest

from anklumed.persist import MAX_FILE_BYTES, PersistDir, format_kv, parse_kv
from anklumed.slots import model
from anklumed.slots.model import SlotStatus, parse_meta, read_slots_state
from anklumed.stick import SlotName
from anklumed.timestamps import parse_time


@pytest.mark.parametrize(
    ("text", "expected", "problem"),
    [
        ("A", "A", False), ("B\n", "B", False), ("  b \n\n", "B", False), ("a", "A", False),
        ("", "A", True), ("\n", "A", True), ("C", "A", True), ("AB", "A", True),
        ("A\nB", "A", True), ("\x00\xff", "A", True), ("B" * 10000, "A", True), (None, "A", True),
    ],
)
def test_ab_state(text: str | None, expected: str, problem: bool) -> None:
    slot, problems = model.parse_slot_name(text)
    assert slot is SlotName(expected)
    assert bool(problems) is problem


@pytest.mark.parametrize(
    ("text", "expected", "problem"),
    [
        ("0", 0, False), ("0003", 3, False), ("2\n", 2, False), (" 3 ", 3, False),
        ("9999", 9999, False),
        (None, 0, False), ("", 0, True), ("-1", 0, True), ("1.5", 0, True), ("x", 0, True),
        ("10000", 0, True), ("9" * 5000, 0, True), ("\u0661", 0, True), ("0x1", 0, True),
        ("1 2", 0, True),
    ],
)
def test_boot_count(text: str | None, expected: int, problem: bool) -> None:
    value, problems = model.parse_count(text, "boot-count", 0, 0, model.MAX_BOOT_COUNT)
    assert value == expected
    assert bool(problems) is problem


def test_kv_lenient() -> None:
    values, problems = parse_kv('# c\n\n A = 1 \nB="two words"\nno equals\nC=\n=x\nd-e=1')
    assert values == {"A": "1", "B": "two words", "C": ""}
    assert len(problems) == 3


def test_kv_round_trip_and_refuses_newlines() -> None:
    values = {"FROM": "A", "TO": "B"}
    assert parse_kv(format_kv(values))[0] == values
    with pytest.raises(ValueError):
        format_kv({"X": "a\nB=evil"})


def test_meta_invalid_fields_are_not_trusted_nor_lost() -> None:
    meta, problems = parse_meta(
        "STATUS=ok\nSHA256=zz\nSIZE=-3\nDATA_BLOCK_SIZE=4095\nLAST_GOOD_AT=yesterday\n"
        "ROOT_HASH=ABCDEF\nFUTURE_KEY=kept\n", SlotName.A)
    assert meta.status is SlotStatus.OK
    assert meta.sha256 is None and meta.size is None and meta.data_block_size is None
    assert meta.last_good_at is None
    assert meta.root_hash == "abcdef"
    assert meta.extra == {"FUTURE_KEY": "kept", "SHA256": "zz", "SIZE": "-3",
                          "DATA_BLOCK_SIZE": "4095", "LAST_GOOD_AT": "yesterday"}
    assert len(problems) == 4
    # Kept as read: a rewrite (mark good) loses nothing, a valid value wins.
    stamped = meta.model_copy(update={"last_good_at": parse_time("1700000000")})
    values = parse_kv(format_kv(stamped.to_kv()))[0]
    assert values["SHA256"] == "zz" and values["LAST_GOOD_AT"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize("text", ["STATUS=great\n", "VERSION=1\n", "garbage", "STATUS=\n"])
def test_meta_without_valid_status_is_never_ok(text: str) -> None:
    meta, problems = parse_meta(text, SlotName.B)
    assert meta.status in (SlotStatus.FAILED, SlotStatus.EMPTY)
    assert problems


def test_meta_absent_is_empty_without_problem() -> None:
    meta, problems = parse_meta(None, SlotName.B)
    assert meta.status is SlotStatus.EMPTY and problems == []


def test_meta_round_trip_keeps_unknown_keys() -> None:
    text = "STATUS=ok\nVERSION=1.2\nLAST_GOOD_AT=2026-01-02T03:04:05Z\nX_VENDOR=1\n"
    meta, _ = parse_meta(text, SlotName.A)
    again, problems = parse_meta(format_kv(meta.to_kv()), SlotName.A)
    assert again == meta and problems == []


def test_rollback_garbage() -> None:
    rb, problems = model.parse_rollback("FROM=Z\nTO=A\n")
    assert rb is None and problems
    rb, problems = model.parse_rollback("FROM=b\nTO=a\nREASON=boot-count\nAT=1700000000\n")
    assert rb is not None and rb.from_slot is SlotName.B and rb.at is not None


def test_read_state_of_a_garbage_directory(tmp_path: Path) -> None:
    (tmp_path / "ab-state").write_bytes(b"\xff\xfe garbage")
    (tmp_path / "boot-count").write_text("lots")
    (tmp_path / "boot-attempts").mkdir()  # a directory where a file should be
    (tmp_path / "slots").mkdir()
    (tmp_path / "slots" / "A.meta").write_text("STATUS=ok\n" + "X" * (MAX_FILE_BYTES + 1))
    state = read_slots_state(PersistDir(tmp_path))
    assert state.primary is SlotName.A
    assert state.boot_count == 0
    assert state.boot_attempts == 3
    assert state.meta[SlotName.A].status is not SlotStatus.OK
    assert len(state.problems) >= 4


def test_read_state_of_an_empty_directory(tmp_path: Path) -> None:
    state = read_slots_state(PersistDir(tmp_path))
    assert state.primary is SlotName.A and state.boot_count == 0
    assert state.meta[SlotName.B].status is SlotStatus.EMPTY


def test_write_primary_resets_count_first(tmp_path: Path) -> None:
    seen: list[str] = []
    pdir = PersistDir(tmp_path, step_hook=lambda step: seen.append(step))
    model.write_primary(pdir, SlotName.B, 0)
    assert (tmp_path / "boot-count").read_text() == "0\n"
    assert (tmp_path / "ab-state").read_text() == "B\n"
    assert seen.count("rename") == 2


def test_file_names_cannot_escape(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        PersistDir(tmp_path).path("../etc/passwd")
