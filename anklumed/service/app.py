"""The daemon on the bus: the core's snapshots exported, its operations guarded.

``Daemon`` connects to the bus, exports one object per interface, and keeps
their properties equal to the core's snapshots (it observes the core); a
call is authorized by polkit here before it reaches the core. What the
daemon knows and does lives in ``anklumed.core``.
"""

import asyncio
import logging
import os

from dbus_fast import BusType, RequestNameReply
from dbus_fast.aio import MessageBus

from anklumed.core.snapshots import JobSnapshot
from anklumed.core.system import LiveSystem
from anklumed.errors import AnklumeError
from anklumed.service.boundary import (
    BUS_NAME,
    ROOT_PATH,
    Caller,
    GetAllFromSnapshot,
    RefuseWhileStopping,
    StateInterface,
    capture_caller,
)
from anklumed.service.data_objects import DATA_PATH, DataDiskInterface
from anklumed.service.objects import (
    FILE_METHODS,
    JobInterface,
    ManagerInterface,
    SlotInterface,
    job_path,
    slot_path,
)
from anklumed.service.passed_files import PassedFds
from anklumed.service.polkit import Authority
from anklumed.service.systemd import Systemd
from anklumed.stick import SlotName

log = logging.getLogger(__name__)

try:
    from systemd import daemon as sd_daemon
except ImportError:  # pragma: no cover - systemd-python is a declared dependency
    sd_daemon = None


def notify(state: str) -> None:
    if sd_daemon is not None and os.environ.get("NOTIFY_SOCKET"):
        sd_daemon.notify(state)


class Daemon:
    def __init__(self, core: LiveSystem, bus_address: str | None = None) -> None:
        self.core = core
        self.bus_address = bus_address
        self.bus: MessageBus | None = None
        # One authority for the daemon's life: its counter makes polkit
        # cancellation ids unique, so a timed-out check cancels only itself.
        self.authority: Authority | None = None
        self.interfaces: list[StateInterface] = []
        self.job_interfaces: dict[str, JobInterface] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.stopping = False  # from the first line of stop(): methods are refused

    async def authorize(self, action: str, caller: Caller) -> None:
        assert self.authority is not None
        await self.authority.check(action, caller)

    # ---- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        bus = await asyncio.wait_for(self._connect(), 10)
        self.bus = bus
        self.authority = Authority(bus)
        bus.add_message_handler(PassedFds(FILE_METHODS))  # first: it sees every message
        bus.add_message_handler(RefuseWhileStopping(lambda: self.stopping))
        bus.add_message_handler(capture_caller)
        bus.add_message_handler(GetAllFromSnapshot(bus))
        await self.core.start()
        self._export()
        self.core.subscribe(self)
        reply = await asyncio.wait_for(bus.request_name(BUS_NAME), 10)  # dbus-fast: no timeout
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise AnklumeError(f"{BUS_NAME} is already owned by another process")
        self.core.run_background(Systemd(bus))
        self._watchdog = asyncio.get_running_loop().create_task(self._watchdog_pings())
        notify("READY=1")
        self._status()
        self.core.log_ready()

    async def _connect(self) -> MessageBus:
        # Unix fds: local update bundles arrive open (Manager.UpdateFromFiles).
        if self.bus_address:
            return await MessageBus(bus_address=self.bus_address,
                                    negotiate_unix_fd=True).connect()
        return await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()

    def _export(self) -> None:
        assert self.bus is not None
        manager = ManagerInterface(self)
        self.bus.export(ROOT_PATH, manager)
        self.interfaces = [manager]
        for slot in SlotName:
            iface = SlotInterface(self, slot)
            self.bus.export(slot_path(slot), iface)
            self.interfaces.append(iface)
        data = DataDiskInterface(self)
        self.bus.export(DATA_PATH, data)
        self.interfaces.append(data)

    async def stop(self) -> None:
        self.stopping = True
        notify("STOPPING=1")
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.core.stop()
        if self.bus is not None and self.bus.connected:
            self.bus.disconnect()

    async def _watchdog_pings(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if usec <= 0:
            return
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(usec / 2e6)

    # ---- the core's changes, as properties and signals (core.system.Observer) ----
    def _on_the_bus(self) -> bool:
        """Whether a signal can go out. Once the bus is lost, main() ends the
        daemon at its next turn of the loop; a change the core makes before
        then has no one to tell (sending would fail on the closed socket and
        log a traceback that hides the one line saying the bus was lost)."""
        return self.bus is not None and self.bus.connected

    def state_changed(self) -> None:
        if self._on_the_bus():
            for iface in self.interfaces:
                iface.publish()
        self._status()

    def job_started(self, job: JobSnapshot) -> None:
        if not self._on_the_bus():
            return
        assert self.bus is not None
        # The finished job of the same kind gives way: only the last one is kept.
        for path, iface in list(self.job_interfaces.items()):
            if iface.job.kind == job.kind and iface.job.number != job.number:
                self.bus.unexport(path)
                del self.job_interfaces[path]
        iface = JobInterface(self, job)
        self.bus.export(job_path(job.number), iface)
        self.job_interfaces[job_path(job.number)] = iface

    def job_changed(self, job: JobSnapshot) -> None:
        iface = self.job_interfaces.get(job_path(job.number))
        if iface is not None and self._on_the_bus():
            iface.show(job)

    def job_finished(self, job: JobSnapshot) -> None:
        iface = self.job_interfaces.get(job_path(job.number))
        if iface is not None and self._on_the_bus():
            iface.show(job)
            iface.Finished()

    def _status(self) -> None:
        notify(f"STATUS={self.core.summary()}")
