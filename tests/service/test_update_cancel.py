"""Cancel in every phase of an update, and a second update while one runs.

The phases are cancelled deterministically, from inside the update (the
moment each phase reports its first progress), with the daemon's own
Updater (devtools/update_direct.py). Through the bus: cancel with
anklumectl, and Busy.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from anklumed.errors import Cancelled
from anklumed.jobs import Job
from anklumed.slots.update import UpdateRequest
from devtools.bundle_server import Faults, serving
from devtools.slowness import scaled
from devtools.update_direct import run_update
from tests.service.conftest import Sim
from tests.service.test_update import make_bundle
from tests.service.test_update_http import IMAGE_FILLER, fast_downloads

BUSY, CANCELLED = 6, 11


def boot_files(files: dict[str, str]) -> tuple[str, str, str]:
    return files["ab-state"], files["boot-count"], files["slots/A.meta"]


@pytest.mark.parametrize(("phase", "slot_b_after"), [
    ("checking", "empty"),      # nothing written: B keeps what it had
    ("writing", "failed"),      # B is partly overwritten: never booted
    ("syncing", "failed"),
    ("verifying", "failed"),
])
async def test_cancel_in_each_phase_leaves_the_boot_as_it_was(
        sim: Sim, tmp_path: Path, phase: str, slot_b_after: str) -> None:
    manifest = make_bundle(sim, tmp_path, filler=IMAGE_FILLER)
    sim.stop_daemon()
    before = sim.persist_files()
    seen: list[str] = []

    def cancel_at(job: Job, event: str) -> None:
        seen.append(event)
        if event == phase:
            assert job.cancel()

    with pytest.raises(Cancelled, match=f"cancelled during {phase}"):
        await run_update(sim.workdir / "anklumed.toml", UpdateRequest(str(manifest)),
                         cancel_at)
    assert phase in seen
    after = sim.persist_files()
    assert boot_files(after) == boot_files(before)
    assert f"STATUS={slot_b_after}" in after["slots/B.meta"]
    assert "slots/B.verity" not in after


async def test_cancel_is_refused_once_activation_began(sim: Sim, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path)
    sim.stop_daemon()
    refused: list[bool] = []

    def cancel_at(job: Job, event: str) -> None:
        if event == "activating":
            refused.append(not job.cancel())

    message = await run_update(sim.workdir / "anklumed.toml", UpdateRequest(str(manifest)),
                               cancel_at)
    assert refused == [True]
    assert "slot B holds 2.0.0" in message
    assert sim.persist_files()["ab-state"] == "B\n"


def wait_for_phase(sim: Sim, phase: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        jobs = sim.ctl("jobs").stdout
        if f" {phase} " in jobs:
            return
        time.sleep(0.1)
    raise AssertionError(f"no job reached {phase}: {sim.ctl('jobs').stdout}")


def test_a_running_update_is_cancelled_from_the_cli_and_a_second_is_busy(
        sim: Sim, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path, filler=IMAGE_FILLER)
    fast_downloads(sim)
    before = sim.persist_files()
    # A server that stalls mid-image keeps the update in its writing phase.
    # Past the first 4 MiB write, each next byte stalls until the daemon's 1 s
    # read timeout reconnects: many seconds in the writing phase.
    faults = Faults(stall_at=[(5 << 20) + i for i in range(20)], stall_seconds=3)
    with serving(manifest.parent, faults) as server:
        url = f"{server.url}/{manifest.name}"
        started = sim.ctl("update", url, "--no-wait")
        assert started.returncode == 0, started.stderr
        wait_for_phase(sim, "writing")
        second = sim.ctl("update", url)
        assert second.returncode == BUSY, second.stderr
        assert "already running" in second.stderr
        waiter = subprocess.Popen([sys.executable, "-m", "anklumectl", "wait"],
                                  cwd=sim_repo(), env=sim.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        cancelled = sim.ctl("cancel")
        assert cancelled.returncode == 0, cancelled.stderr
        _, err = waiter.communicate(timeout=scaled(30))
    assert waiter.returncode == CANCELLED, err
    after = sim.persist_files()
    assert boot_files(after) == boot_files(before)
    assert "STATUS=failed" in after["slots/B.meta"]
    assert sim.status()["LastUpdate"]["state"] == "cancelled"


def sim_repo() -> Path:
    return Path(__file__).resolve().parents[2]
