"""The daemon: reads the boot state, exports it on the bus, guards changes."""

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyudev
from dbus_fast import BusType, RequestNameReply
from dbus_fast.aio import MessageBus

from anklumed import __version__, events, memory, stick
from anklumed.config import Config, DeadlineAction
from anklumed.data.disks import Disk
from anklumed.data.manager import Adoptable, DataDisk, DataState, SetupRequest, adoptable
from anklumed.data.poolconf import Backend, Encryption
from anklumed.errors import AnklumeError
from anklumed.handoff import Handoff, read_handoff
from anklumed.host import Backing, read_memory_encryption, root_backing
from anklumed.host import boot_time as kernel_boot_time
from anklumed.jobs import Job, JobManager
from anklumed.persist import PersistStore
from anklumed.service.boundary import (
    BUS_NAME,
    ROOT_PATH,
    Caller,
    GetAllFromSnapshot,
    capped,
    capture_caller,
)
from anklumed.service.data_objects import DATA_PATH, DataDiskInterface
from anklumed.service.objects import (
    FILE_METHODS,
    JobInterface,
    ManagerInterface,
    SlotInterface,
    job_path,
    job_summary,
    slot_path,
)
from anklumed.service.passed_files import PassedFds
from anklumed.service.polkit import Authority
from anklumed.service.systemd import BOOT_COMPLETE, Systemd
from anklumed.slots.boot_menu import BootMenu
from anklumed.slots.controller import SlotController
from anklumed.slots.update import Updater, UpdateRequest
from anklumed.stick import BootStick, SlotName

log = logging.getLogger(__name__)
# Problems published: enough to see what is wrong with every file on PERSIST;
# each one line a person reads (a quoted value is cut well before this).
MAX_PROBLEMS = 20
MAX_PROBLEM_TEXT = 300
# BootDeadline is a snapshot property (a countdown read from memory): it is
# published again this often while the deadline runs, so a reader is at most
# this far behind, and listeners get a signal only this often.
DEADLINE_REFRESH = 10.0

try:
    from systemd import daemon as sd_daemon
except ImportError:  # pragma: no cover - systemd-python is a declared dependency
    sd_daemon = None


def notify(state: str) -> None:
    if sd_daemon is not None and os.environ.get("NOTIFY_SOCKET"):
        sd_daemon.notify(state)


def uptime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def seconds_left(deadline: float | None, now: float) -> int:
    """Whole seconds from ``now`` until ``deadline`` (monotonic times), rounded
    up, so a pending deadline never reads 0; 0 when none is pending."""
    if deadline is None:
        return 0
    return max(1, math.ceil(deadline - now))


class Daemon:
    def __init__(self, config: Config, bus_address: str | None = None) -> None:
        self.config = config
        self.bus_address = bus_address
        self.version = __version__
        self.handoff: Handoff = read_handoff(config.handoff, config.cmdline)
        self.stick: BootStick | None = None
        self.stick_error: str | None = None
        self.root: Backing = Backing(in_ram=None)
        self.memory_encryption = read_memory_encryption()
        btime = kernel_boot_time()
        self.boot_time = datetime.fromtimestamp(btime, UTC) if btime else None
        self.store = PersistStore(None, config.persist_mountpoint)
        self.slots = SlotController(self.store, self.handoff, self.boot_time)
        self.slots.menu = BootMenu(lambda: self.stick)
        self.marked_good = asyncio.Event()
        # When the boot must have completed (time.monotonic: the wall clock
        # may jump at boot, when NTP sets it); None once marked good or passed.
        self.deadline: float | None = None
        self.bus: MessageBus | None = None
        # One authority for the daemon's life: its counter makes polkit
        # cancellation ids unique, so a timed-out check cancels only itself.
        self.authority: Authority | None = None
        self.interfaces: list[Any] = []
        self.jobs = JobManager(self._on_job_change, self._on_job_finished)
        self.job_interfaces: dict[str, JobInterface] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._udev_monitor: pyudev.Monitor | None = None
        self.data = DataDisk(self.store, config.data_paths(), self.boot_disks,
                             config.allow_loop_disks)
        self.data_candidates: list[Disk] = []
        # Read by every publish: computed with the candidates, in a worker
        # thread, since it runs blkid (never on the event loop: command.run).
        self.data_adoptable: list[Adoptable] = []
        # False until the first probe of every disk: until then no candidate
        # and no adoptable disk is known, which clients must not read as none.
        self.disks_probed = False
        self._data_refresh: asyncio.Task[None] | None = None
        self._persist_stale = False  # the stick was seen gone since PERSIST was read

    # ---- facts the interfaces publish --------------------------------------
    def problems(self) -> list[str]:
        """What is wrong, capped where it is published: a junk file on PERSIST
        can name thousands (a 60 KB meta made 30,000, and status 2 MB)."""
        found = list(self.handoff.problems)
        if self.stick_error:
            found.append(self.stick_error)
        if self.slots.state:
            found.extend(self.slots.state.problems)
        elif self.slots.error:
            found.append(self.slots.error)
        if self.data.snapshot.state is DataState.ERROR and self.data.snapshot.conf is None:
            found.append(self.data.snapshot.message)  # pool.conf on PERSIST cannot be used
        return capped(found, MAX_PROBLEMS, MAX_PROBLEM_TEXT, "problems")

    def media_present(self) -> bool:
        """The stick is there: its PERSIST node exists and the disk has a size
        (a detached loop device or an emptied card reader keeps its node)."""
        if self.stick is None or self.store.device is None:
            return False
        size = Path("/sys/class/block") / self.stick.disk.name / "size"
        try:
            return self.store.device.exists() and int(size.read_text()) > 0 \
                and self.store.same_disk()
        except (OSError, ValueError):
            return False

    def safe_to_remove(self) -> bool:
        """The stick can be pulled: / does not read from it and PERSIST is idle."""
        if not self.media_present():
            return True
        reads_from_stick = self.stick is not None and (
            self.root.in_ram is not True or self.stick.disk.name in self.root.disks
        )
        return not reads_from_stick and not self.store.busy

    def partitions(self) -> list[list[Any]]:
        if not self.stick:
            return []
        return [[p.label, p.number, p.size, str(p.device or "")]
                for p in sorted(self.stick.partitions.values(), key=lambda p: p.number)]

    def deadline_remaining(self) -> int:
        """The Manager's BootDeadline: seconds left for this boot to reach
        boot-complete.target, 0 when no deadline is pending."""
        return seconds_left(self.deadline, time.monotonic())

    async def authorize(self, action: str, caller: Caller) -> None:
        assert self.authority is not None
        await self.authority.check(action, caller)

    # ---- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        bus = await asyncio.wait_for(self._connect(), 10)
        self.bus = bus
        self.authority = Authority(bus)
        bus.add_message_handler(PassedFds(FILE_METHODS))  # first: it sees every message
        bus.add_message_handler(capture_caller)
        bus.add_message_handler(GetAllFromSnapshot(bus))
        await self._find_stick()
        self.slots.listeners.append(self._on_slots_changed)
        await self.slots.start()
        await self.refresh_data(reload=True, disks=False)
        self._export()
        reply = await asyncio.wait_for(bus.request_name(BUS_NAME), 10)  # dbus-fast: no timeout
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise AnklumeError(f"{BUS_NAME} is already owned by another process")
        self._watch_media()
        self._spawn(self._first_disk_scan())
        self._spawn(self._boot_deadline())
        if self.config.follow_systemd:
            self._spawn(self._follow_boot_complete())
        self._spawn(self._watchdog_pings())
        notify("READY=1")
        self._status()
        log.info("anklumed %s ready: %s", self.version, self._summary())
        events.boot_found(self.slots, self.handoff.rollback_from)

    async def _connect(self) -> MessageBus:
        # Unix fds: local update bundles arrive open (Manager.UpdateFromFiles).
        if self.bus_address:
            return await MessageBus(bus_address=self.bus_address,
                                    negotiate_unix_fd=True).connect()
        return await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()

    async def _find_stick(self) -> None:
        hint = self.config.boot_disk or self.handoff.boot_disk
        self.root = await asyncio.to_thread(root_backing)
        if hint is None and self.root.disks and len(self.root.disks) == 1:
            hint = Path("/dev") / self.root.disks[0]
        try:
            self.stick = await asyncio.to_thread(
                stick.discover, hint, self.handoff.persist_partuuid
            )
            self.stick_error = None
        except AnklumeError as e:
            self.stick, self.stick_error = None, str(e)
            log.error("%s", e)
        self.store.device = self.stick.persist.device if self.stick else None
        if self.stick and self.store.device is None:
            self.stick_error = (
                f"the kernel has no block device for ANKLUME-PERSIST on {self.stick.disk}"
            )

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

    # ---- the data disk -----------------------------------------------------------
    def boot_disks(self) -> set[str]:
        """Disks the system runs from: never offered as the data disk."""
        names = set(self.root.disks)
        if self.stick is not None:
            names.add(self.stick.disk.name)
        return names

    async def _first_disk_scan(self) -> None:
        await self.refresh_data()
        memory.give_back()  # start-up's peak is over: the rest is idle time

    async def refresh_data(self, reload: bool = False, disks: bool = True) -> None:
        self.data.snapshot = await asyncio.to_thread(self.data.read, reload)
        if disks:  # probing every disk takes a while: not before the name is taken
            self.data_candidates, self.data_adoptable = await asyncio.to_thread(
                self._probe_disks)
            self.disks_probed = True
        self.publish()

    def _probe_disks(self) -> tuple[list[Disk], list[Adoptable]]:
        candidates = self.data.candidates()
        return candidates, adoptable(candidates)

    def last_data_job(self) -> dict[str, str]:
        jobs = [j for kind, j in self.jobs.last.items() if kind.startswith("data-")]
        return job_summary(max(jobs, key=lambda j: j.number) if jobs else None)

    def _start_data_job(self, kind: str, work: Callable[[Job], str]) -> Job:
        async def run(job: Job) -> str:
            try:
                return await asyncio.to_thread(work, job)
            finally:
                await self.refresh_data(reload=True)

        # One data-disk operation at a time ("data" group): a second is Busy.
        job = self.jobs.start(kind, "data", run)
        self._export_job(job)
        return job

    def start_data_setup(self, disk: str, pool: str, backend: Backend,
                         encryption: Encryption, secret: bytes) -> Job:
        request = SetupRequest(disk, pool, backend, encryption, secret)
        return self._start_data_job("data-setup", lambda j: self.data.setup(j, request))

    def start_data_unlock(self, secret: bytes) -> Job:
        return self._start_data_job("data-unlock", lambda j: self.data.unlock(j, secret))

    def start_data_adopt(self, disk: str, secret: bytes) -> Job:
        return self._start_data_job("data-adopt", lambda j: self.data.adopt(j, disk, secret))

    def start_data_lock(self, stop_incus: bool) -> Job:
        return self._start_data_job("data-lock", lambda j: self.data.lock(j, stop_incus))

    # ---- jobs ------------------------------------------------------------------
    def start_update(self, request: UpdateRequest) -> Job:
        updater = Updater(self.slots, lambda: self.stick, self.handoff.slot,
                          self.config.compatible, self.config.keys_dir,
                          lambda: datetime.now(UTC), self.config.http_settings())
        # One job writes the slots at a time ("slots" group): a second is Busy.
        job = self.jobs.start("update", "slots", lambda j: updater.run(j, request))
        self._export_job(job)
        return job

    def _export_job(self, job: Job) -> None:
        assert self.bus is not None
        # The finished job of the same kind gives way: only the last one is kept.
        for path, iface in list(self.job_interfaces.items()):
            if iface.job.kind == job.kind and iface.job is not job:
                self.bus.unexport(path)
                del self.job_interfaces[path]
        iface = JobInterface(self, job)
        self.bus.export(job_path(job), iface)
        self.job_interfaces[job_path(job)] = iface
        self.publish()

    def _on_job_change(self, job: Job) -> None:
        iface = self.job_interfaces.get(job_path(job))
        if iface is not None:
            iface.publish()

    def _on_job_finished(self, job: Job) -> None:
        iface = self.job_interfaces.get(job_path(job))
        if iface is not None:
            iface.publish()
            iface.Finished()
        self.publish()
        if job.kind == "update":  # the stick may have come and gone meanwhile
            self._spawn(self._refresh_soon())

    def publish(self) -> None:
        for iface in self.interfaces:
            iface.publish()
        self._status()

    def _on_slots_changed(self) -> None:
        if self.slots.assessment.marked_good:
            self.marked_good.set()
        self.publish()

    def _summary(self) -> str:
        a = self.slots.assessment
        return f"booted {a.booted or '?'}, primary {a.primary or '?'}, boot {a.state.value}"

    def _status(self) -> None:
        notify(f"STATUS={self._summary()}")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception():
            log.error("background task failed", exc_info=task.exception())

    async def stop(self) -> None:
        notify("STOPPING=1")
        await self.jobs.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._udev_monitor is not None:
            asyncio.get_running_loop().remove_reader(self._udev_monitor.fileno())
        if self.bus is not None:
            self.bus.disconnect()

    # ---- background work -----------------------------------------------------
    async def _watchdog_pings(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if usec <= 0:
            return
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(usec / 2e6)

    async def _boot_deadline(self) -> None:
        """Reboot a boot that never completes, so that it counts as a failed attempt."""
        if self.slots.assessment.marked_good:
            return
        remaining = self.config.boot_deadline - uptime()
        self.deadline = time.monotonic() + max(remaining, 0)
        while (left := self.deadline - time.monotonic()) > 0 and not self.marked_good.is_set():
            self.publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.marked_good.wait(), min(left, DEADLINE_REFRESH))
        self.deadline = None
        self.publish()
        if self.marked_good.is_set():
            return
        why = await self._why_not_complete()
        log.error("boot did not complete within %d s (%s)", self.config.boot_deadline, why)
        if self.config.deadline_action is DeadlineAction.REBOOT:
            log.error("rebooting: this boot counts as a failed attempt of slot %s",
                      self.slots.assessment.booted or "?")
            assert self.bus is not None
            await Systemd(self.bus).reboot()

    async def _why_not_complete(self) -> str:
        assert self.bus is not None
        try:
            jobs = await Systemd(self.bus).waiting_jobs()
        except (OSError, TimeoutError):
            return f"{BOOT_COMPLETE} was not reached; systemd cannot be asked why"
        return "still waiting for " + ", ".join(jobs[:10]) if jobs else "no job pending"

    async def _follow_boot_complete(self) -> None:
        assert self.bus is not None
        systemd = Systemd(self.bus)
        if not await systemd.available():
            log.info("systemd is not on this bus: the boot is marked good only by MarkGood")
            return
        await systemd.when_active(BOOT_COMPLETE, self._mark_good_automatically)

    async def _mark_good_automatically(self) -> None:
        if self.slots.assessment.marked_good or self.handoff.slot is None:
            return
        log.info("%s reached: marking slot %s good", BOOT_COMPLETE, self.handoff.slot)
        try:
            await self.slots.mark_good()
        except AnklumeError as e:
            log.error("could not mark the boot good: %s", e)

    def _watch_media(self) -> None:
        """Notice the stick being pulled or plugged (udev, or kernel uevents without it)."""
        try:
            context = pyudev.Context()
            source = "udev" if Path("/run/udev/control").exists() else "kernel"
            monitor = pyudev.Monitor.from_netlink(context, source=source)
            monitor.filter_by("block")
            monitor.start()
        except (OSError, ValueError) as e:
            log.warning("cannot watch block devices (%s): media status will not update", e)
            return
        self._udev_monitor = monitor
        asyncio.get_running_loop().add_reader(monitor.fileno(), self._on_uevent)

    def _on_uevent(self) -> None:
        assert self._udev_monitor is not None
        removed = False
        while (device := self._udev_monitor.poll(timeout=0)) is not None:
            log.debug("uevent %s %s", device.action, device.sys_name)
            removed = removed or device.action == "remove"
        if removed:  # the data disk may be gone: hold its writes at once, not in 0.5 s
            self._spawn(self._hold_data_if_pulled())
        self.publish()
        # A disk plugged or pulled: look again, once for a burst of events.
        if self._data_refresh is None or self._data_refresh.done():
            self._data_refresh = asyncio.get_running_loop().create_task(self._refresh_soon())

    async def _hold_data_if_pulled(self) -> None:
        if await asyncio.to_thread(self.data.hold_if_pulled):
            await self.refresh_data(disks=False)

    async def _refresh_soon(self) -> None:
        await asyncio.sleep(0.5)
        try:
            await self._recheck_stick()
            await self.refresh_data()
        except Exception:
            log.exception("cannot look at the disks again")

    async def _recheck_stick(self) -> None:
        """Find the stick again if its node went away, and read PERSIST again
        if it was seen gone (another computer may have written it) or the last
        read failed (it came back under the same name). Not while an update
        holds the slots: its end calls this again."""
        if self.jobs.running.get("slots"):
            return
        if not self.media_present():
            self._persist_stale = True
            await self._rediscover_stick()
        elif self._persist_stale or self.slots.state is None:
            self._persist_stale = False
            await self.slots.refresh()

    async def _rediscover_stick(self) -> None:
        """The stick came back (or another port gave it a new name): find it again."""
        before = self.stick.disk if self.stick else None
        await self._find_stick()
        if self.stick is None or not self.media_present():
            return
        if self.stick.disk != before:
            log.info("boot stick found again at %s", self.stick.disk)
        self._persist_stale = False
        await self.slots.refresh()
        self.publish()
