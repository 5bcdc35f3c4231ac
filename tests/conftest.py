"""The VM tier's pytest wiring (DESIGN.md §8).

Tests marked ``vm`` need a real kernel (device-mapper, ZFS) or systemd as PID 1.
On this machine they are stand-ins: with ``--vm`` (``./run-tests`` passes it)
each one is replaced by a proxy, and the first proxy of a mode boots one guest
that runs every selected test of that mode; each proxy then reports its own
test's outcome, read from the results file the guest writes (never from the
console). Without ``--vm`` they are skipped, saying how to run them.
The terminal summary says how long each guest ran and where its time went,
test by test.

``@pytest.mark.vm`` runs in a plain guest (busybox init, then a chroot);
``@pytest.mark.vm(mode="systemd")`` in a guest booted to systemd with
anklume Live installed and a simulated boot stick plugged in;
``@pytest.mark.vm(mode="host")`` runs here and boots guests itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools import slowness

IN_GUEST = os.environ.get("ANKLUME_VM_GUEST") == "1"
RESULTS_ENV = "ANKLUME_VM_RESULTS"
MODES = ("plain", "systemd", "host")
RUNS_KEY = pytest.StashKey["GuestRuns"]()
VM_PARTS = {"host": ("host",), "guests": ("plain", "systemd")}


# A shell that starts a background job without job control (`.ci/run &`, a
# script's `cmd &`) makes it ignore SIGINT, and an ignored signal stays
# ignored across exec: every program a test starts would then shrug off the
# Ctrl-C the test sends it (anklumectl's, the guide's). A handler, unlike
# SIG_IGN, is reset to the default at exec, so the tests' children get Ctrl-C
# as at a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header() -> str:
    return slowness.described()  # devtools/slowness.py: how long the tiers' waits are


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("anklume VM tier")
    group.addoption("--vm", action="store_true",
                    help="run tests marked vm in QEMU guests (real kernel, systemd)")
    group.addoption("--vm-timeout", type=float, default=900.0,
                    help="seconds one guest may run (default 900)")
    group.addoption("--vm-part", choices=tuple(VM_PARTS), default=None,
                    help="with --vm, only the tests that boot QEMU from here (host: one "
                         "vCPU each) or only those run in the two guests (guests): .ci/run "
                         "runs both parts side by side")
    group.addoption("--image", action="store_true",
                    help="run the image tier (tests/image: builds the stick image; minutes)")
    group.addoption("--desktop", action="store_true",
                    help="run the desktop tier (tests/desktop: headless sway, waybar, mako "
                         "as an ordinary user, the tray and the guide against the simulation)")
    group.addoption("--desktops", action="store_true",
                    help="run the desktops tier, by hand (tests/image/test_desktops_session.py: "
                         "builds the --desktop all image and boots sway, labwc and KDE; "
                         "about half an hour)")
    group.addoption("--zfs-image", action="store_true",
                    help="run the ZFS image tier, by hand (tests/image/test_zfs_image.py: "
                         "builds the default --zfs image and boots it with its data disk "
                         "on ZFS)")


def vm_mode(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("vm")
    if marker is None:
        return None
    mode = str(marker.kwargs.get("mode", "plain"))
    if mode not in MODES:
        raise pytest.UsageError(f"{item.nodeid}: vm mode must be one of {MODES}")
    return mode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_GUEST:
        return
    _keep_by_hand(config, items)
    if not config.getoption("--image"):
        skip_image = pytest.mark.skip(reason="image tier: builds the stick image; "
                                             "run with --image (.ci/run does)")
        for item in items:
            if item.get_closest_marker("image") is not None:
                item.add_marker(skip_image)
    if not config.getoption("--desktop"):
        skip_desktop = pytest.mark.skip(reason="desktop tier: headless sway, waybar, mako; "
                                               "run with --desktop (.ci/run does)")
        for item in items:
            if item.get_closest_marker("desktop") is not None:
                item.add_marker(skip_desktop)
    if not config.getoption("--vm"):
        skip = pytest.mark.skip(reason="VM tier: needs QEMU and a real kernel; "
                                       "run with --vm (./run-tests does)")
        for item in items:
            if vm_mode(item) is not None:
                item.add_marker(skip)
        return
    if os.geteuid() != 0:
        raise pytest.UsageError("--vm needs root (it builds loop-backed stick images)")
    _keep_vm_part(config, items)
    runs = GuestRuns(config)
    config.stash[RUNS_KEY] = runs
    for index, item in enumerate(items):
        mode = vm_mode(item)
        if mode in ("plain", "systemd"):
            assert item.parent is not None  # a test's module
            items[index] = GuestTest.from_parent(item.parent, name=item.name, mode=mode,
                                                 runs=runs, markers=list(item.iter_markers()))
            runs.nodeids.setdefault(mode, []).append(item.nodeid)


# The tiers run by hand, each with its marker and its flag. Without the flag
# their tests are deselected, not skipped: they live in tests/image, which
# the image tier (.ci/run) runs, and CI counts a skip as a failure. They stay
# out of CI for its hour: the desktops tier would download KDE on CI's fresh
# machine and boot three desktops; the ZFS image tier compiles zfs-dkms in
# its build and boots an image of its own.
BY_HAND = {"desktops": "--desktops", "zfs_image": "--zfs-image"}


def _keep_by_hand(config: pytest.Config, items: list[pytest.Item]) -> None:
    other = [item for item in items
             if any(item.get_closest_marker(marker) is not None
                    and not config.getoption(flag) for marker, flag in BY_HAND.items())]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item not in other]


def _keep_vm_part(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--vm-part: the other part's VM tests are deselected (not skipped: the
    other half of the tier runs them), tests of other tiers stay as they are."""
    part = config.getoption("--vm-part")
    if part is None:
        return
    modes = VM_PARTS[part]
    other = [item for item in items if vm_mode(item) not in (None, *modes)]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item not in other]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Only what -k/-m left selected is run in the guests."""
    runs = session.config.stash.get(RUNS_KEY, None)
    if runs is not None:
        runs.selected = {item.nodeid for item in session.items}


class GuestFailure(Exception):
    pass


class GuestTest(pytest.Item):
    """Stands in on the host for a test that runs inside a guest."""

    def __init__(self, *, mode: str, runs: GuestRuns, markers: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.mode = mode
        self.runs = runs
        self.own_markers.extend(markers)  # so -m and -k select proxies as the tests

    def runtest(self) -> None:
        reports = self.runs.reports(self.mode).get(self.nodeid)
        if not reports:
            raise GuestFailure("the guest reported nothing for this test: "
                               + self.runs.explain(self.mode))
        for report in reports:
            if report["outcome"] == "failed":
                raise GuestFailure(f"[in the {self.mode} guest, {report['when']}]\n"
                                   + report["text"])
        for report in reports:
            if report["outcome"] == "skipped":
                pytest.skip(f"in the guest: {report['text']}")

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, GuestFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.name} (in the {self.mode} guest)"


class GuestRuns:
    """One guest boot per mode, run lazily by its first test, results kept."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.nodeids: dict[str, list[str]] = {}
        self._reports: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._explain: dict[str, str] = {}
        self._said: dict[str, list[str]] = {}
        self.selected: set[str] | None = None

    def reports(self, mode: str) -> dict[str, list[dict[str, Any]]]:
        if mode not in self._reports:
            self._say(f"\nVM tier: booting a {mode} guest for {len(self.selected_in(mode))} tests")
            self._reports[mode] = self._run(mode)
        return self._reports[mode]

    def explain(self, mode: str) -> str:
        return self._explain.get(mode, "")

    def selected_in(self, mode: str) -> list[str]:
        return [n for n in self.nodeids.get(mode, [])
                if self.selected is None or n in self.selected]

    def summary(self) -> list[str]:
        """What each guest's run said: in the terminal summary, since the
        output of a passing test's run is captured and dropped."""
        return [line for said in self._said.values() for line in said]

    def _say(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)

    def _run(self, mode: str) -> dict[str, list[dict[str, Any]]]:
        """Boot the guest and read its results; what it has to say is kept
        for the terminal summary."""
        from devtools.vm import scenarios
        nodeids = self.selected_in(mode)
        command = [".venv/bin/python", "-m", "pytest", "-p", "no:cacheprovider", "-q",
                   "-rfEs", *nodeids]
        env = {RESULTS_ENV: "/anklume-vm/results.jsonl"}
        stream = sys.stdout if self.config.getoption("capture") == "no" else None
        # A short LUKS key derivation: each unlock costs seconds under TCG
        # otherwise; its passes given, as the simulation's (no benchmark).
        files = ({"anklumed.toml": "luks_unlock_ms = 200\nluks_memory_mib = 32\n"
                                   "luks_iterations = 4\n"}
                 if mode == "systemd" else None)
        result = scenarios.run(mode, command, env=env, files=files,
                               timeout=self.config.getoption("--vm-timeout"), console=stream)
        self._explain[mode] = result.explain()
        reports = _read_results(result.rundir / "results.jsonl")
        clean = result.ok and set(nodeids) <= set(reports) and all(
            r["outcome"] != "failed" for rs in reports.values() for r in rs)
        if clean:
            result.discard()  # nothing to look into; anything else keeps its logs
        kept = "" if clean else f" (console: {result.rundir / 'console.log'})"
        self._said[mode] = [f"VM tier: {mode} guest done in {result.seconds:.0f} s{kept}",
                            _time_spent(reports, result.seconds)]
        return reports


def _time_spent(reports: dict[str, list[dict[str, Any]]], total: float) -> str:
    """Where a guest's time went: the host's --durations charges the whole
    boot to the first test of the mode, so the guest's own figures (setup,
    call and teardown of each test) are said here."""
    spent = {nodeid: sum(r.get("duration", 0.0) for r in records)
             for nodeid, records in reports.items()}
    lines = [f"VM tier: {total - sum(spent.values()):.0f} s outside the tests "
             "(boot, start, shutdown); each test in the guest, setup to teardown:"]
    for nodeid, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        lines.append(f"  {seconds:7.1f} s  {nodeid}")
    return "\n".join(lines)


def _read_results(path: Path) -> dict[str, list[dict[str, Any]]]:
    reports: dict[str, list[dict[str, Any]]] = {}
    if not path.exists():
        return reports
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the guest died mid-line: that test reports nothing
        reports.setdefault(record["nodeid"], []).append(record)
    return reports


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In the guest: append each phase's outcome to the results file. Here:
    remember skips, which CI counts as failures."""
    if report.skipped and not IN_GUEST:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        CI_SKIPS.append(f"{report.nodeid}: {reason}")
    path = os.environ.get(RESULTS_ENV)
    if not IN_GUEST or not path:
        return
    if report.skipped and isinstance(report.longrepr, tuple):
        text = report.longrepr[2]
    else:
        text = report.longreprtext
    record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
              "text": text, "duration": report.duration}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# In CI (``CI=true``) a skipped test of a tier that was asked to run is a
# failure: a failed ZFS build or a missing tool must not end in a green run.
# Tests deselected on the command line (-k, -m, another directory) are not
# skips; VM tests skipped for want of ``--vm`` are (so CI passes ``--vm``).
CI_SKIPS: list[str] = []


def _ci_strict() -> bool:
    return os.environ.get("CI") == "true" and not IN_GUEST


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _ci_strict() and CI_SKIPS and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    runs = terminalreporter.config.stash.get(RUNS_KEY, None)
    for line in runs.summary() if runs is not None else []:
        terminalreporter.write_line(line)
    if not _ci_strict() or not CI_SKIPS:
        return
    terminalreporter.write_line(
        f"CI=true: {len(CI_SKIPS)} skipped test(s) count as failures:", red=True)
    for line in CI_SKIPS:
        terminalreporter.write_line(f"  {line}", red=True)
