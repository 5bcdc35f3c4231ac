"""docs/hostile-inputs.md lists, per surface, exactly the cases the tests run."""

import re
from pathlib import Path

from tests.persist_cases import FUZZ_CASES, REGRESSIONS, all_ids

REPO = Path(__file__).resolve().parents[2]
ROW_ID = re.compile(r"^\| `([^`]+)` \|", re.M)


def section(title: str) -> str:
    text = (REPO / "docs" / "hostile-inputs.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_persist_catalogue_lists_the_cases_the_tests_run() -> None:
    listed = ROW_ID.findall(section("PERSIST"))
    assert len(listed) == len(set(listed)), "an id is listed twice"
    assert len(all_ids()) == len(set(all_ids())), "two cases share an id"
    assert sorted(listed) == sorted(all_ids())


def test_every_persist_regression_names_a_test_that_exists() -> None:
    source = (REPO / "tests" / "service" / "test_persist_hostile.py").read_text()
    defined = set(re.findall(r"^def (test_\w+)\(", source, re.M))
    assert {r.test for r in REGRESSIONS} == defined
    assert all(c.input and c.answer for c in FUZZ_CASES)


def test_the_catalogue_lists_exactly_the_case_classes_run() -> None:
    """D-Bus calls: the fuzzer's case classes and the bus boundary's cases."""
    from devtools.dbus_fuzz import CASES as DBUS_FUZZ_CASES
    from tests.service import test_bus_boundary

    ids = ROW_ID.findall(section("D-Bus calls"))
    assert len(ids) == len(set(ids)), "an id is listed twice"
    assert set(ids) == set(DBUS_FUZZ_CASES) | set(test_bus_boundary.CASES)


def test_the_catalogue_lists_exactly_these_cases() -> None:
    """Update sources: tests/service/test_update_sources.py's cases, in order."""
    from tests.service.test_update_sources import CASES

    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert ROW_ID.findall(section("Update sources")) == ids
