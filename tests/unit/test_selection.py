"""The boot selection rule against the shared table spec/boot-selection.tsv."""

from pathlib import Path

import pytest

from anklumed.slots.model import (
    BOOT_ATTEMPTS,
    BOOT_COUNT,
    DEFAULT_ATTEMPTS,
    MAX_ATTEMPTS,
    MAX_BOOT_COUNT,
    SlotStatus,
    parse_count,
    parse_slot_name,
)
from anklumed.slots.selection import select_boot
from anklumed.stick import SlotName

TABLE = Path(__file__).resolve().parents[2] / "spec" / "boot-selection.tsv"


def rows() -> list[list[str]]:
    found = []
    for line in TABLE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        cells = line.split("\t")
        assert len(cells) == 13, f"malformed row: {line!r}"
        found.append(cells)
    return found


def raw(cell: str) -> str | None:
    return None if cell == "-" else "" if cell == "(empty)" else cell


def slot_or_none(cell: str) -> SlotName | None:
    value = cell.strip().upper()
    return SlotName(value) if value in ("A", "B") else None


def test_table_covers_every_outcome() -> None:
    reasons = {r[11] for r in rows()}
    assert {"-", "boot-count", "slot-empty", "slot-pending", "slot-failed"} <= reasons
    assert {r[12] for r in rows()} == {"0", "1"}
    assert len({r[0] for r in rows()}) == len(rows()), "case names must be unique"


@pytest.mark.parametrize("row", rows(), ids=lambda r: r[0])
def test_selection_table(row: list[str]) -> None:
    (_case, ab, count, attempts, st_a, st_b, last_good, cmdline,
     boot, write_ab, write_count, rollback, degraded) = row
    primary, _ = parse_slot_name(raw(ab))
    n, _ = parse_count(raw(count), BOOT_COUNT, 0, 0, MAX_BOOT_COUNT)
    big_n, _ = parse_count(raw(attempts), BOOT_ATTEMPTS, DEFAULT_ATTEMPTS, 1, MAX_ATTEMPTS)
    decision = select_boot(
        primary, n, big_n,
        {SlotName.A: SlotStatus(st_a), SlotName.B: SlotStatus(st_b)},
        last_good=slot_or_none(last_good), forced=slot_or_none(cmdline),
    )
    assert decision.boot is SlotName(boot)
    assert decision.ab_state is SlotName(write_ab)
    assert decision.boot_count == int(write_count)
    assert (decision.rollback_reason or "-") == rollback
    assert decision.degraded is (degraded == "1")
