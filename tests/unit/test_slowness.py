"""The one factor of the tiers' waits (devtools/slowness.py)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import slowness


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    slowness.factor.cache_clear()
    yield
    slowness.factor.cache_clear()


def test_the_environment_sets_the_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(slowness.ENV, "2.5")
    assert slowness.scaled(20) == 50
    assert "2.5" in slowness.described() and slowness.ENV in slowness.described()


@pytest.mark.parametrize("bad", ["fast", "0.5", "0", "nan", ""])
def test_a_factor_that_would_shorten_waits_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                      bad: str) -> None:
    monkeypatch.setenv(slowness.ENV, bad)
    with pytest.raises(SystemExit, match=slowness.ENV):
        slowness.factor()


@pytest.mark.parametrize(("load", "cores", "expected"), [
    (0.3, 2, 1.0), (2.0, 2, 1.0), (4.0, 2, 2.0), (5.0, 2, 2.5), (40.0, 2, 4.0), (3.0, 1, 3.0)])
def test_measured_the_load_per_core_between_1_and_4(
        monkeypatch: pytest.MonkeyPatch, load: float, cores: int, expected: float) -> None:
    monkeypatch.delenv(slowness.ENV, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert slowness.factor() == expected
    assert slowness.scaled(10) == pytest.approx(10 * expected)
    assert os.environ[slowness.ENV] == str(expected)  # what the run's processes inherit


def test_a_guest_gets_the_hosts_factor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from devtools.vm.guest import Guest
    from devtools.vm.kernel import Kernel

    monkeypatch.setenv(slowness.ENV, "3")
    kernel = Kernel("6.1.0-test", tmp_path / "kernel", tmp_path / "initrd")
    Guest(["true"])._write_rundir(tmp_path, kernel)
    assert f"export {slowness.ENV}=3.0\n" in (tmp_path / "run.sh").read_text()
