"""The daemon's observer after its bus is lost: nothing is sent on it.

main() ends the daemon at the loop's next turn after the bus goes; a change
the core makes in between must not try the closed socket (seen once in the
systemd guest: "a state listener failed" and an EBADF traceback before the
one line saying the bus was lost)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from dbus_fast.aio import MessageBus

from anklumed.core.snapshots import JobSnapshot
from anklumed.core.system import LiveSystem
from anklumed.service.app import Daemon
from anklumed.service.boundary import StateInterface
from anklumed.service.objects import JobInterface, job_path


class Core:
    def summary(self) -> str:
        return "slot A, good"


class SendsOnTheBus:
    """Stands for an exported interface: anything it would send fails."""

    def __init__(self) -> None:
        self.sent = 0

    def publish(self) -> None:
        self.sent += 1
        raise OSError(9, "Bad file descriptor")

    def show(self, job: object) -> None:
        self.publish()


@pytest.fixture
async def lost(tmp_path: Path) -> AsyncIterator[tuple[Daemon, SendsOnTheBus]]:
    daemon = Daemon(cast(LiveSystem, Core()))
    # A socket that accepts but never says hello: a bus that never
    # connected and one lost afterwards are the same to dbus-fast.
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "bus"))
        listening.listen()
        daemon.bus = MessageBus(bus_address=f"unix:path={tmp_path / 'bus'}")
        assert not daemon.bus.connected
        iface = SendsOnTheBus()
        daemon.interfaces = [cast(StateInterface, iface)]
        daemon.job_interfaces = {job_path(1): cast(JobInterface, iface)}
        yield daemon, iface


async def test_a_state_change_after_the_bus_is_lost_sends_nothing(
        lost: tuple[Daemon, SendsOnTheBus]) -> None:
    daemon, iface = lost
    daemon.state_changed()
    assert iface.sent == 0


async def test_a_job_change_after_the_bus_is_lost_sends_nothing(
        lost: tuple[Daemon, SendsOnTheBus]) -> None:
    daemon, iface = lost
    job = cast(JobSnapshot, type("Job", (), {"number": 1, "kind": "update"})())
    daemon.job_started(job)
    daemon.job_changed(job)
    daemon.job_finished(job)
    assert iface.sent == 0
    assert list(daemon.job_interfaces) == [job_path(1)]
