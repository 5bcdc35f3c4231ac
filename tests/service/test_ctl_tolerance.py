"""anklumectl against a daemon of another revision, and a bus that goes away
during a call: one sentence and a documented exit code, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from anklumectl.main import EXIT_CODES
from devtools.privatebus import PrivateBus
from devtools.slowness import scaled

REPO = Path(__file__).resolve().parents[2]
WIDE = {**os.environ, "COLUMNS": "200"}  # rich's tables, unwrapped


class Older:
    """A private bus with the FAKE older anklumed (tests/service/older_daemon.py) on it."""

    def __init__(self, workdir: Path) -> None:
        self.bus = PrivateBus(workdir)
        self.daemon: subprocess.Popen[str] | None = None

    def start(self, *lack: str) -> Older:
        self.bus.start()
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "tests.service.older_daemon", self.bus.address,
             "--lack", *lack], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.daemon.stdout is not None
        assert self.daemon.stdout.readline() == "ready\n"
        return self

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "anklumectl", "--bus", self.bus.address,
                               "--no-ask-password", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=False, env=WIDE)

    def start_ctl(self, *args: str) -> subprocess.Popen[str]:
        """anklumectl running a call the FAKE daemon takes and never answers."""
        proc = subprocess.Popen([sys.executable, "-m", "anklumectl", "--bus",
                                 self.bus.address, "--no-ask-password", *args], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.daemon is not None and self.daemon.stdout is not None
        assert self.daemon.stdout.readline().startswith("call ")  # it waits for the answer
        return proc

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)
        self.bus.stop()


@pytest.fixture
def older(tmp_path: Path) -> Iterator[Older]:
    fake = Older(tmp_path / "bus")
    try:
        yield fake
    finally:
        fake.stop()


def one_sentence(stderr: str) -> bool:
    return stderr.startswith("anklumectl: ") and stderr.count("\n") == 1 \
        and "Traceback" not in stderr


def test_a_revision_1_daemon_is_shown_from_its_old_members(older: Older) -> None:
    older.start()
    status = older.ctl("status")
    assert status.returncode == 0, status.stderr
    assert "this boot is not confirmed yet" in status.stdout
    assert "TORAM='maybe'" in status.stdout  # a problem without a code: the daemon's words
    disks = older.ctl("data", "status")
    assert disks.returncode == 0, disks.stderr
    # CandidateDisks is revision 2: the disk comes from the old Candidates tuple.
    assert "/dev/sdz" in disks.stdout and "no: sdz1 is mounted" in disks.stdout
    props = json.loads(older.ctl("data", "status", "--json").stdout)
    assert props["CandidateDisks"][0]["device"] == "/dev/sdz"
    assert props["CandidateDisks"][0]["contents"] == ["gpt partition table"]


def test_a_property_the_command_needs_and_the_daemon_lacks(older: Older) -> None:
    older.start("BootState")
    proc = older.ctl("boot-check")
    assert proc.returncode == EXIT_CODES["Incompatible"] == 13
    assert one_sentence(proc.stderr), proc.stderr
    assert "does not publish BootState, which boot-check needs" in proc.stderr


def test_the_bus_going_away_during_a_call(older: Older) -> None:
    older.start()
    proc = older.start_ctl("mark-good")
    assert older.bus.proc is not None
    older.bus.proc.kill()  # the system bus dies under the waiting call
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CODES["Disconnected"] == 14, stderr
    assert one_sentence(stderr), stderr
    assert "connection to anklumed was lost during the call" in stderr


def test_the_daemon_going_away_during_a_call(older: Older) -> None:
    older.start()
    proc = older.start_ctl("mark-good")
    assert older.daemon is not None
    older.daemon.kill()  # the bus answers NoReply for it
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CODES["Unreachable"] == 7
    assert one_sentence(stderr), stderr
    assert "anklumed is not running or not reachable" in stderr


def test_the_daemon_going_away_while_a_job_is_followed(older: Older) -> None:
    # No call is pending while a job is followed: only its signals are
    # awaited, and a daemon that died sends none. The follower must hear the
    # daemon go, not wait for ever.
    older.start()
    proc = subprocess.Popen([sys.executable, "-m", "anklumectl", "--bus", older.bus.address,
                             "wait", "1"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert older.daemon is not None and older.daemon.stdout is not None
    assert older.daemon.stdout.readline() == "job read\n"  # following it
    older.daemon.kill()
    try:
        _, stderr = proc.communicate(timeout=scaled(30))
    finally:
        proc.kill()
    assert proc.returncode == EXIT_CODES["Disconnected"] == 14, stderr
    assert one_sentence(stderr), stderr
    assert "connection to anklumed was lost" in stderr
