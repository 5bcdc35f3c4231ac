"""The composition root: the one object that owns what anklumed knows.

``LiveSystem`` holds the boot hand-off, the boot stick and PERSIST, the slot
controller, the data disk and the jobs; it runs every operation and the
background work (the boot deadline, the kernel's block-device events), and
hands out frozen snapshots (``snapshots.py``). Whoever shows them (the D-Bus
service) subscribes with an ``Observer`` and reads the snapshots again when
told. Nothing here knows D-Bus or polkit: a caller is authorized before it
reaches an operation.

Everything that touches a disk, the stick or a program runs in a worker
thread (``anklumed.command.run`` refuses the event loop's thread); what it
finds is kept here, so that a snapshot reads memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

import pyudev

from anklumed import __version__, events, memory, stick
from anklumed.config import Config, DeadlineAction
from anklumed.core.snapshots import (
    CandidateDisk,
    DataDiskSnapshot,
    JobSnapshot,
    ManagerSnapshot,
    PartitionSnapshot,
    SlotSnapshot,
    Tristate,
)
from anklumed.data.manager import Adoptable, DataDisk, DataState, SetupRequest, adoptable
from anklumed.data.poolconf import Backend, Encryption, PoolConf
from anklumed.errors import AnklumeError
from anklumed.handoff import Handoff, read_handoff
from anklumed.host import Backing, read_memory_encryption, root_backing
from anklumed.host import boot_time as kernel_boot_time
from anklumed.jobs import Job, JobKind, JobManager
from anklumed.persist import PersistStore
from anklumed.problems import ProblemCode
from anklumed.slots.boot_menu import BootMenu
from anklumed.slots.controller import SlotController
from anklumed.slots.update import Updater, UpdateRequest
from anklumed.stick import BootStick, SlotName

log = logging.getLogger(__name__)
T = TypeVar("T")
BOOT_COMPLETE = "boot-complete.target"
SYSTEMD_RETRY = 5.0  # seconds before asking again a PID 1 that did not answer in time
# BootDeadline is a countdown read from memory: it is published again this
# often while the deadline runs, so a reader is at most this far behind, and
# listeners get a signal only this often.
DEADLINE_REFRESH = 10.0
DATA_JOBS = (JobKind.DATA_SETUP, JobKind.DATA_UNLOCK, JobKind.DATA_ADOPT, JobKind.DATA_LOCK)


class Observer(Protocol):
    """Told when a snapshot changed; reads the snapshots it shows again."""

    def state_changed(self) -> None:
        """The boot, slot or data-disk snapshot may have changed."""

    def job_started(self, job: JobSnapshot) -> None:
        """A job began (the last job of its kind until the next one)."""

    def job_changed(self, job: JobSnapshot) -> None: ...

    def job_finished(self, job: JobSnapshot) -> None:
        """The job ended; ``state_changed`` follows."""


class InitSystem(Protocol):
    """What the core asks of systemd (the service layer reaches it over the bus)."""

    async def available(self) -> bool: ...

    async def when_active(self, unit: str, action: Callable[[], Awaitable[None]]) -> None: ...

    async def waiting_jobs(self) -> list[str]: ...

    async def reboot(self) -> None: ...


def uptime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def seconds_left(deadline: float | None, now: float) -> int:
    """Whole seconds from ``now`` until ``deadline`` (monotonic times), rounded
    up, so a pending deadline never reads 0; 0 when none is pending."""
    if deadline is None:
        return 0
    return max(1, math.ceil(deadline - now))


def _block_monitor() -> pyudev.Monitor:
    """Block-device events, from udev once it runs, else from the kernel
    (worker thread: libudev reads its configuration)."""
    source = "udev" if Path("/run/udev/control").exists() else "kernel"
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=source)
    monitor.filter_by("block")
    monitor.start()
    return monitor


@dataclass(frozen=True, slots=True)
class _Found:
    """Where the system runs from, as a worker thread found it."""

    root: Backing
    stick: BootStick | None
    error: str | None
    media_present: bool


class LiveSystem:
    def __init__(self, config: Config) -> None:
        """Reads the hand-off and the host's facts: build it in a worker thread."""
        self.config = config
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
        self.jobs = JobManager(self._on_job_change, self._on_job_finished)
        self.data = DataDisk(self.store, config.data_paths(), self.boot_disks,
                             config.allow_loop_disks, config.loop_disks_under)
        # Found with the candidates, in a worker thread: listing the disks and
        # reading their labels (blkid) takes a while.
        self.data_candidates: tuple[CandidateDisk, ...] = ()
        self.data_adoptable: tuple[Adoptable, ...] = ()
        # Looked at with the disks: a module loaded since is seen at the next probe.
        self.data_filesystems: tuple[Backend, ...] = ()
        # False until the first probe of every disk: until then no candidate
        # and no adoptable disk is known, which clients must not read as none.
        self.disks_probed = False
        # The stick is there (its node and its size in /sys): looked at in a
        # worker thread when the stick is found and on every block event.
        self.media_present = False
        self.observers: list[Observer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False  # stop() began: start no more background work
        self._udev_monitor: pyudev.Monitor | None = None
        self._data_refresh: asyncio.Task[None] | None = None
        self._media_look: asyncio.Task[None] | None = None
        self._media_dirty = False  # a block event came since the last look began
        self._disks_dirty = False  # a block event came since the last rescan began
        self._probes_started = 0  # disk probes begun, and the newest one shown
        self._probe_shown = 0
        self._persist_stale = False  # the stick was seen gone since PERSIST was read

    def subscribe(self, observer: Observer) -> None:
        self.observers.append(observer)

    # ---- snapshots: memory only ------------------------------------------------
    def manager(self) -> ManagerSnapshot:
        st = self.slots.state
        h = self.handoff
        return ManagerSnapshot(
            version=self.version, boot=self.slots.assessment,
            boot_count=st.boot_count if st else 0,
            boot_attempts=st.boot_attempts if st else 0,
            problems=self.problems(), last_rollback=st.last_rollback if st else None,
            handoff_source=h.source, toram=Tristate.of(h.toram), verity=h.verity,
            root_in_ram=Tristate.of(self.root.in_ram),
            boot_disk=str(self.stick.disk) if self.stick else "",
            media_present=self.media_present, safe_to_remove=self.safe_to_remove(),
            partitions=self.partitions(), memory_encryption=self.memory_encryption,
            ram_crypt_requested=bool(h.ram_crypt_requested),
            boot_deadline=seconds_left(self.deadline, time.monotonic()),
            jobs=tuple(JobSnapshot.of(j) for j in self.jobs.last.values()),
            last_update=self.job_snapshot(JobKind.UPDATE),
        )

    def slot(self, name: SlotName) -> SlotSnapshot:
        st = self.slots.state
        a = self.slots.assessment
        part = self.stick.partitions.get(name.label) if self.stick else None
        return SlotSnapshot(
            name=name, meta=st.meta[name] if st else None,
            booted=a.booted is name, primary=a.primary is name,
            device=str(part.device) if part and part.device else "",
            partition_size=part.size if part else 0,
        )

    def data_disk(self) -> DataDiskSnapshot:
        snap = self.data.snapshot
        return DataDiskSnapshot(
            state=snap.state, conf=snap.conf, device=snap.device,
            mounts=MappingProxyType(dict(snap.mounts)), message=snap.message,
            message_code=snap.message_code,
            pulled=snap.pulled, attempts_left=self.data.attempts_left,
            candidates=self.data_candidates, last_job=self._last_data_job(),
            adoptable=self.data_adoptable if snap.conf is None else (),
            disks_probed=self.disks_probed, filesystems=self.data_filesystems,
        )

    def job_snapshot(self, kind: JobKind) -> JobSnapshot | None:
        job = self.jobs.last.get(kind)
        return JobSnapshot.of(job) if job else None

    def _last_data_job(self) -> JobSnapshot | None:
        jobs = [j for kind, j in self.jobs.last.items() if kind in DATA_JOBS]
        return JobSnapshot.of(max(jobs, key=lambda j: j.number)) if jobs else None

    def problems(self) -> tuple[tuple[ProblemCode, str], ...]:
        """What is wrong: each sentence with the ProblemCode of its source."""
        found = [(ProblemCode.HANDOFF_DAMAGED, p) for p in self.handoff.problems]
        mismatch = self.handoff.kernel_mismatch()
        if mismatch:
            found.append((ProblemCode.KERNEL_OF_OTHER_SLOT, mismatch))
        if self.stick_error:
            found.append((ProblemCode.BOOT_STICK_UNKNOWN, self.stick_error))
        if self.slots.state:
            found.extend((ProblemCode.PERSIST_DAMAGED, p) for p in self.slots.state.problems)
        elif self.slots.error:
            found.append((ProblemCode.PERSIST_UNREADABLE, self.slots.error))
        if self.data.snapshot.state is DataState.ERROR and self.data.snapshot.conf is None:
            # pool.conf on PERSIST cannot be used
            found.append((ProblemCode.POOL_CONF_UNUSABLE, self.data.snapshot.message))
        return tuple(found)

    def safe_to_remove(self) -> bool:
        """The stick can be pulled: / does not read from it and PERSIST is idle."""
        if not self.media_present:
            return True
        reads_from_stick = self.stick is not None and (
            self.root.in_ram is not True or self.stick.disk.name in self.root.disks
        )
        return not reads_from_stick and not self.store.busy

    def partitions(self) -> tuple[PartitionSnapshot, ...]:
        if not self.stick:
            return ()
        return tuple(PartitionSnapshot(p.label, p.number, p.size, str(p.device or ""))
                     for p in sorted(self.stick.partitions.values(), key=lambda p: p.number))

    def summary(self) -> str:
        a = self.slots.assessment
        return f"booted {a.booted or '?'}, primary {a.primary or '?'}, boot {a.state.value}"

    def _changed(self) -> None:
        for observer in self.observers:
            observer.state_changed()

    # ---- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        """Find the stick, read PERSIST and pool.conf: what the first snapshot shows."""
        # Watch before looking: a stick pulled between the first look and the
        # watch's start would stay "present" until the next event. The events
        # wait in the socket until run_background reads them.
        await self._open_block_monitor()
        await self._find_stick()
        self.slots.listeners.append(self._on_slots_changed)
        # pool.conf is read in the slots' transaction: PERSIST mounted once.
        read: list[PoolConf | AnklumeError | None] = []
        await self.slots.start(also=lambda pdir: read.append(self.data.conf_in(pdir)))
        if not read:  # PERSIST could not be read: the data disk says why, as at any reload
            await self.refresh_data(reload=True, disks=False)
            return
        self.data.snapshot = await asyncio.to_thread(self.data.read_with, read[0])
        self._changed()

    def run_background(self, init: InitSystem) -> None:
        """Once the snapshots are shown: watch the disks, probe them, keep the
        boot deadline and (``follow_systemd``) mark the boot good when it completes."""
        if self._udev_monitor is not None:
            asyncio.get_running_loop().add_reader(self._udev_monitor.fileno(), self._on_uevent)
        self._spawn(self._first_disk_scan())
        self._spawn(self._boot_deadline(init))
        if self.config.follow_systemd:
            self._spawn(self._follow_boot_complete(init))

    async def stop(self) -> None:
        """Stop watching first, then end the jobs and the background work, and
        wait for them: once main() returns, asyncio's own shutdown has no
        thread pool left, so a look at the disks started by a late uevent (or
        by a job's end) would die there with a traceback."""
        self._stopping = True
        if self._udev_monitor is not None:
            asyncio.get_running_loop().remove_reader(self._udev_monitor.fileno())
        await self.jobs.stop()
        tasks = [t for t in (*self._tasks, self._data_refresh, self._media_look) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _find_stick(self) -> None:
        found = await asyncio.to_thread(self._locate)
        self.root, self.stick, self.stick_error = found.root, found.stick, found.error
        self.media_present = found.media_present

    def _locate(self) -> _Found:
        """The stick, from the hand-off, the configuration or the root's disk
        (worker thread: reads /sys and the disks' partition tables)."""
        hint = self.config.boot_disk or self.handoff.boot_disk
        root = root_backing()
        if hint is None and root.disks and len(root.disks) == 1:
            hint = Path("/dev") / root.disks[0]
        error = None
        try:
            found: BootStick | None = stick.discover(hint, self.handoff.persist_partuuid)
        except AnklumeError as e:
            found, error = None, str(e)
            log.error("%s", e)
        # The setter notes the disk's sequence number from /sys (persist.same_disk).
        self.store.device = found.persist.device if found else None
        if found and self.store.device is None:
            error = f"the kernel has no block device for ANKLUME-PERSIST on {found.disk}"
        return _Found(root, found, error, self._media_now(found))

    def _media_now(self, found: BootStick | None) -> bool:
        """The stick is there: its PERSIST node exists and the disk has a size
        (a detached loop device or an emptied card reader keeps its node)."""
        if found is None or self.store.device is None:
            return False
        size = Path("/sys/class/block") / found.disk.name / "size"
        try:
            return self.store.device.exists() and int(size.read_text()) > 0 \
                and self.store.same_disk()
        except (OSError, ValueError):
            return False

    async def _look_at_media(self) -> bool:
        self.media_present = await asyncio.to_thread(self._media_now, self.stick)
        return self.media_present

    # ---- the slots -----------------------------------------------------------
    async def mark_good(self) -> None:
        await self._then_look(self.slots.mark_good())

    async def mark_bad(self, slot: SlotName) -> None:
        await self._then_look(self.slots.mark_bad(slot))

    async def rollback(self, force: bool) -> SlotName:
        """Make the other slot primary; returns it."""
        return await self._then_look(self.slots.rollback(force))

    async def set_primary(self, slot: SlotName, force: bool) -> None:
        await self._then_look(self.slots.set_primary(slot, force))

    async def _then_look(self, operation: Awaitable[T]) -> T:
        """``operation``, then a look at the stick before the caller hears
        back: a PERSIST write that failed may mean the stick is gone, and the
        status read next must say so (not wait for the kernel's event)."""
        try:
            return await operation
        finally:
            await self._look_at_media()
            self._changed()

    def start_update(self, request: UpdateRequest) -> JobSnapshot:
        updater = Updater(self.slots, lambda: self.stick, self.handoff.slot,
                          self.config.compatible, self.config.keys_dir,
                          lambda: datetime.now(UTC), self.config.http_settings(),
                          self.config.kernel_machine())
        # One job writes the slots at a time ("slots" group): a second is Busy.
        return self._start_job(JobKind.UPDATE, "slots", lambda j: updater.run(j, request))

    def _on_slots_changed(self) -> None:
        if self.slots.assessment.marked_good:
            self.marked_good.set()
        self._changed()

    # ---- the data disk -------------------------------------------------------
    def boot_disks(self) -> set[str]:
        """Disks the system runs from: never offered as the data disk."""
        names = set(self.root.disks)
        if self.stick is not None:
            names.add(self.stick.disk.name)
        return names

    async def refresh_data(self, reload: bool = False, disks: bool = True) -> None:
        """Look at the data disk again (``reload``: and at pool.conf on
        PERSIST), and (``disks``) at every disk that could hold the data."""
        self.data.snapshot = await asyncio.to_thread(self.data.read, reload)
        if disks:  # probing every disk takes a while: not before the name is taken
            # Probes may overlap (the first scan, a hot-plug, Refresh, a data
            # job's end): one started earlier may end later, and must not
            # replace what a newer one saw (a disk plugged in between).
            self._probes_started += 1
            probe = self._probes_started
            found = await asyncio.to_thread(self._probe_disks)
            made_with = await asyncio.to_thread(self.data.filesystems)
            if probe > self._probe_shown:
                self._probe_shown = probe
                self.data_candidates, self.data_adoptable = found
                self.data_filesystems = made_with
                self.disks_probed = True
        self._changed()

    async def refresh_filesystems(self) -> None:
        """Look again at what the data disk can be made with (a few files:
        cheap enough for every Refresh, which the disks' probe is not)."""
        made_with = await asyncio.to_thread(self.data.filesystems)
        if made_with != self.data_filesystems:
            self.data_filesystems = made_with
            self._changed()

    def _probe_disks(self) -> tuple[tuple[CandidateDisk, ...], tuple[Adoptable, ...]]:
        candidates = self.data.candidates()
        return tuple(CandidateDisk.of(d) for d in candidates), tuple(adoptable(candidates))

    async def _first_disk_scan(self) -> None:
        await self.refresh_data()
        memory.give_back()  # start-up's peak is over: the rest is idle time

    def _start_data_job(self, kind: JobKind, work: Callable[[Job], str]) -> JobSnapshot:
        async def run(job: Job) -> str:
            try:
                return await asyncio.to_thread(work, job)
            finally:
                await self.refresh_data(reload=True)

        # One data-disk operation at a time ("data" group): a second is Busy.
        return self._start_job(kind, "data", run)

    def start_data_setup(self, disk: str, pool: str, backend: Backend,
                         encryption: Encryption, secret: bytes) -> JobSnapshot:
        request = SetupRequest(disk, pool, backend, encryption, secret)
        return self._start_data_job(JobKind.DATA_SETUP, lambda j: self.data.setup(j, request))

    def start_data_unlock(self, secret: bytes) -> JobSnapshot:
        return self._start_data_job(JobKind.DATA_UNLOCK, lambda j: self.data.unlock(j, secret))

    def start_data_adopt(self, disk: str, secret: bytes) -> JobSnapshot:
        return self._start_data_job(JobKind.DATA_ADOPT,
                                    lambda j: self.data.adopt(j, disk, secret))

    def start_data_lock(self, stop_incus: bool) -> JobSnapshot:
        return self._start_data_job(JobKind.DATA_LOCK,
                                    lambda j: self.data.lock(j, stop_incus))

    async def change_passphrase(self, current: bytes, new: bytes) -> None:
        await asyncio.to_thread(self.data.change_passphrase, current, new)

    async def add_recovery_key(self, current: bytes) -> bytes:
        return await asyncio.to_thread(self.data.add_recovery_key, current)

    # ---- jobs ------------------------------------------------------------------
    def _start_job(self, kind: JobKind, group: str,
                   work: Callable[[Job], Awaitable[str]]) -> JobSnapshot:
        async def then_look(job: Job) -> str:  # the end is published with the stick's state
            return await self._then_look(work(job))

        snap = JobSnapshot.of(self.jobs.start(kind, group, then_look))
        for observer in self.observers:
            observer.job_started(snap)
        self._changed()
        return snap

    def cancel_job(self, number: int) -> bool:
        """Ask job ``number`` to stop; False when it is past the point of no
        return, or no longer kept."""
        for job in self.jobs.last.values():
            if job.number == number:
                return job.cancel()
        return False

    def _on_job_change(self, job: Job) -> None:
        snap = JobSnapshot.of(job)
        for observer in self.observers:
            observer.job_changed(snap)

    def _on_job_finished(self, job: Job) -> None:
        snap = JobSnapshot.of(job)
        for observer in self.observers:
            observer.job_finished(snap)
        self._changed()
        if job.kind == JobKind.UPDATE:  # the stick may have come and gone meanwhile
            self._rescan_soon()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._stopping:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception():
            log.error("background task failed", exc_info=task.exception())

    # ---- the boot deadline ---------------------------------------------------
    async def _boot_deadline(self, init: InitSystem) -> None:
        """Reboot a boot that never completes, so that it counts as a failed attempt."""
        if self.slots.assessment.marked_good:
            return
        remaining = self.config.boot_deadline - uptime()
        self.deadline = time.monotonic() + max(remaining, 0)
        while (left := self.deadline - time.monotonic()) > 0 and not self.marked_good.is_set():
            self._changed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.marked_good.wait(), min(left, DEADLINE_REFRESH))
        self.deadline = None
        self._changed()
        if self.marked_good.is_set():
            return
        why = await self._why_not_complete(init)
        if self.marked_good.is_set():  # marked good while systemd was asked why
            return
        log.error("boot did not complete within %d s (%s)", self.config.boot_deadline, why)
        if self.config.deadline_action is DeadlineAction.REBOOT:
            log.error("rebooting: this boot counts as a failed attempt of slot %s",
                      self.slots.assessment.booted or "?")
            await self._reboot(init)

    @staticmethod
    async def _why_not_complete(init: InitSystem) -> str:
        try:
            jobs = await init.waiting_jobs()
        except (OSError, TimeoutError):
            return f"{BOOT_COMPLETE} was not reached; systemd cannot be asked why"
        return "still waiting for " + ", ".join(jobs[:10]) if jobs else "no job pending"

    async def _follow_boot_complete(self, init: InitSystem) -> None:
        """Mark the boot good once boot-complete.target is reached. A PID 1
        that does not answer in time is busy, not absent (starting many units
        on a slow machine): it is asked again. Given up, the boot would never
        be marked good, the deadline would reboot it as a failed attempt, and
        three such boots would roll a good OS back."""
        while not self.slots.assessment.marked_good:
            try:
                if not await init.available():
                    log.info("systemd is not on this bus: the boot is marked good only by MarkGood")
                    return
                await init.when_active(BOOT_COMPLETE, self._mark_good_automatically)
                return
            except TimeoutError:  # before OSError: it is one
                log.warning("systemd did not answer about %s in time; asking again",
                            BOOT_COMPLETE)
            except OSError as e:
                log.error("cannot follow %s (%s): the boot is marked good only by MarkGood",
                          BOOT_COMPLETE, e)
                return
            await asyncio.sleep(SYSTEMD_RETRY)

    @staticmethod
    async def _reboot(init: InitSystem) -> None:
        """The deadline's reboot, asked again of a PID 1 too busy to answer
        (asking twice is harmless: the same job replaces itself)."""
        while True:
            try:
                await init.reboot()
                return
            except TimeoutError:
                log.warning("systemd did not answer the reboot in time; asking again")
            except OSError as e:
                log.error("cannot reboot (%s): this boot counts as a failed attempt only "
                          "when it ends", e)
                return
            await asyncio.sleep(SYSTEMD_RETRY)

    async def _mark_good_automatically(self) -> None:
        if self.slots.assessment.marked_good or self.handoff.slot is None:
            return
        log.info("%s reached: marking slot %s good", BOOT_COMPLETE, self.handoff.slot)
        try:
            await self.slots.mark_good()
        except AnklumeError as e:
            log.error("could not mark the boot good: %s", e)

    # ---- block devices come and go ---------------------------------------------
    async def _open_block_monitor(self) -> None:
        """Notice the stick being pulled or plugged (udev, or kernel uevents without it)."""
        try:
            self._udev_monitor = await asyncio.to_thread(_block_monitor)
        except (OSError, ValueError) as e:
            log.warning("cannot watch block devices (%s): media status will not update", e)

    def _on_uevent(self) -> None:
        assert self._udev_monitor is not None
        removed = False
        while (device := self._udev_monitor.poll(timeout=0)) is not None:
            log.debug("uevent %s %s", device.action, device.sys_name)
            removed = removed or device.action == "remove"
        if removed:  # the data disk may be gone: hold its writes at once, not in 0.5 s
            self._spawn(self._hold_data_if_pulled())
        # One look at the stick at a time, and one more after it if events came
        # meanwhile: a burst of events (loop devices set up elsewhere) costs two.
        self._media_dirty = True
        if self._stopping:
            return
        if self._media_look is None or self._media_look.done():
            self._media_look = asyncio.get_running_loop().create_task(self._media_changed())
        self._rescan_soon()  # a disk plugged or pulled

    async def _media_changed(self) -> None:
        while self._media_dirty:
            self._media_dirty = False
            await self._look_at_media()
        self._changed()

    async def _hold_data_if_pulled(self) -> None:
        if await asyncio.to_thread(self.data.hold_if_pulled):
            await self.refresh_data(disks=False)

    def _rescan_soon(self) -> None:
        """Look at the stick and the disks again in 0.5 s: once for a burst of
        reasons, and once more if a reason comes while that look runs."""
        self._disks_dirty = True
        if self._stopping:
            return
        if self._data_refresh is None or self._data_refresh.done():
            self._data_refresh = asyncio.get_running_loop().create_task(self._refresh_soon())

    async def _refresh_soon(self) -> None:
        """Rescan until no event came during the last rescan: a stick plugged
        back while the rescan that found it gone was still listing the disks
        must not be left unseen until some other disk moves."""
        while self._disks_dirty:
            await asyncio.sleep(0.5)
            self._disks_dirty = False
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
        if not await self._look_at_media():
            self._persist_stale = True
            await self._rediscover_stick()
        elif self._persist_stale or self.slots.state is None:
            self._persist_stale = False
            await self.slots.refresh()

    async def _rediscover_stick(self) -> None:
        """The stick came back (or another port gave it a new name): find it again."""
        before = self.stick.disk if self.stick else None
        await self._find_stick()
        if self.stick is None or not self.media_present:
            return
        if self.stick.disk != before:
            log.info("boot stick found again at %s", self.stick.disk)
        self._persist_stale = False
        await self.slots.refresh()
        self._changed()

    def log_ready(self) -> None:
        log.info("anklumed %s ready: %s", self.version, self.summary())
        events.boot_found(self.slots, self.handoff.rollback_from)
