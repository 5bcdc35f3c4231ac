"""The core without a bus: anklumed.core.system.LiveSystem driven directly.

PERSIST is a plain directory (PersistStore's directory mode) and the boot
stick a model with no disk behind it, so nothing here needs root or a loop
device. What the service tier checks through D-Bus (tests/service) is the
same core behind the bus.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import io
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from anklumed import command
from anklumed.config import Config
from anklumed.core import system
from anklumed.core.snapshots import CandidateDisk, JobSnapshot, Tristate
from anklumed.core.system import LiveSystem
from anklumed.data.disks import Disk
from anklumed.data.manager import Adoptable, DataState
from anklumed.data.poolconf import LABEL_PREFIX, Backend
from anklumed.errors import InvalidArgument
from anklumed.handoff import parse_handoff
from anklumed.host import Backing
from anklumed.jobs import Job, JobKind, JobPhase, JobState
from anklumed.problems import ProblemCode
from anklumed.service.data_objects import data_disk_properties
from anklumed.service.objects import job_properties, manager_properties, slot_properties
from anklumed.slots.assessment import BootState
from anklumed.stick import PERSIST_LABEL, BootStick, Partition, SlotName
from devtools.slowness import scaled
from tests.unit.test_persist_hostile import GOOD_META
from tests.unit.test_persist_hostile import persist as persist_with_slot_a


class Recorder:
    """An observer (core.system.Observer) that notes what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, JobSnapshot | None]] = []
        self.a_job_ended = asyncio.Event()

    def state_changed(self) -> None:
        self.calls.append(("state", None))

    def job_started(self, job: JobSnapshot) -> None:
        self.calls.append(("started", job))

    def job_changed(self, job: JobSnapshot) -> None:
        self.calls.append(("changed", job))

    def job_finished(self, job: JobSnapshot) -> None:
        self.calls.append(("finished", job))
        self.a_job_ended.set()

    def said(self, what: str) -> list[JobSnapshot | None]:
        return [job for name, job in self.calls if name == what]


class FakeInit:
    """FAKE systemd (core.system.InitSystem): no PID 1 to ask in a unit test."""

    def __init__(self) -> None:
        self.rebooted = 0

    async def available(self) -> bool:
        return False

    async def when_active(self, unit: str, action: Callable[[], Awaitable[None]]) -> None:
        raise AssertionError("not followed: systemd is not available")

    async def waiting_jobs(self) -> list[str]:
        return ["anklume-boot-check.service (start)"]

    async def reboot(self) -> None:
        self.rebooted += 1


def fake_stick(tmp_path: Path) -> BootStick:
    """A stick with no disk behind it: its PERSIST node does not exist."""
    parts = {label: Partition(label=label, number=n, size=n << 20, device=tmp_path / f"dev{n}")
             for n, label in enumerate(("ANKLUME-EFI", "ANKLUME-OS-A", "ANKLUME-OS-B",
                                        PERSIST_LABEL), start=1)}
    return BootStick(disk=tmp_path / "stick", size=8 << 30, partitions=parts)


@pytest.fixture
def persist(tmp_path: Path) -> Path:
    """Slot A primary at its first attempt, both slots ok."""
    root = persist_with_slot_a(tmp_path)
    (root / "slots" / "B.meta").write_text(GOOD_META)
    return root


@pytest.fixture
def core(tmp_path: Path, persist: Path, monkeypatch: pytest.MonkeyPatch) -> LiveSystem:
    (tmp_path / "boot.env").write_text("SLOT=A\nBOOT_COUNT=1\nROLLBACK=0\nTORAM=1\n"
                                       "VERITY=signed\n")
    (tmp_path / "cmdline").write_text("quiet\n")
    config = Config(handoff=tmp_path / "boot.env", cmdline=tmp_path / "cmdline",
                    persist_mountpoint=tmp_path / "mnt", data_mountpoint=tmp_path / "data",
                    incus_state_dir=tmp_path / "incus", incus_socket=tmp_path / "incus.sock",
                    boot_deadline=30)
    stick = fake_stick(tmp_path)
    monkeypatch.setattr("anklumed.core.system.stick.discover", lambda hint, partuuid: stick)
    live = LiveSystem(config)
    live.store.directory = persist  # FAKE PERSIST: a plain directory, not a mount
    monkeypatch.setattr(live.data, "candidates", lambda: [])  # FAKE: no disk to offer
    return live


def test_the_core_reads_the_boot_and_marks_it_good_without_a_bus(
        core: LiveSystem, persist: Path) -> None:
    seen = Recorder()
    core.subscribe(seen)

    async def scenario() -> None:
        await core.start()
        before = core.manager()
        assert (before.boot.booted, before.boot.primary) == (SlotName.A, SlotName.A)
        assert before.boot.state is BootState.PENDING and before.boot_count == 1
        assert before.toram is Tristate.YES and before.root_in_ram in Tristate
        assert not before.media_present and before.safe_to_remove  # no disk behind it
        assert [p.label for p in before.partitions][-1] == PERSIST_LABEL
        await core.mark_good()

    asyncio.run(scenario())
    after = core.manager()
    assert after.boot.state is BootState.GOOD and after.boot.marked_good
    assert after.boot_count == 0 and (persist / "boot-count").read_text().strip() == "0"
    assert core.marked_good.is_set()
    assert seen.said("state"), "the observer was not told of the change"
    slot_a = core.slot(SlotName.A)
    assert slot_a.booted and slot_a.primary and slot_a.meta is not None
    assert slot_a.meta.last_good_at is not None


def test_a_rollback_and_a_refusal_go_to_persist_and_the_snapshots(
        core: LiveSystem, persist: Path) -> None:
    async def scenario() -> SlotName:
        await core.start()
        to = await core.rollback(force=False)
        await core.mark_bad(SlotName.A)
        with pytest.raises(Exception, match="not ok"):
            await core.set_primary(SlotName.A, force=False)
        return to

    assert asyncio.run(scenario()) is SlotName.B
    assert (persist / "ab-state").read_text().strip() == "B"
    assert core.manager().last_rollback is not None
    assert core.slot(SlotName.B).primary and not core.slot(SlotName.A).primary
    assert "STATUS=failed" in (persist / "slots" / "A.meta").read_text()


@pytest.mark.parametrize(("pool_conf", "state"), [
    (None, DataState.ABSENT),
    ("FORMAT=1\nPOOL_NAME=Bad Name\n", DataState.ERROR),
    ("FORMAT=1\nPOOL_NAME=data\nPOOL_TYPE=btrfs\nENCRYPTION=none\n", DataState.LOCKED),
])
def test_the_start_reads_persist_in_one_transaction(
        core: LiveSystem, persist: Path, monkeypatch: pytest.MonkeyPatch,
        pool_conf: str | None, state: DataState) -> None:
    """The slots' state and pool.conf: one mount of PERSIST at start (each
    mount and unmount is a process and an ext4 mount, paid at every boot)."""
    if pool_conf is not None:
        (persist / "pool.conf").write_text(pool_conf)
    opened = 0
    real_transaction = core.store.transaction

    @contextlib.contextmanager
    def counted() -> Iterator[Any]:
        nonlocal opened
        opened += 1
        with real_transaction() as pdir:
            yield pdir

    monkeypatch.setattr(core.store, "transaction", counted)
    asyncio.run(core.start())
    assert opened == 1
    snap = core.data_disk()
    assert snap.state is state
    if state is DataState.ERROR:
        assert "pool.conf is damaged" in snap.message
        assert ProblemCode.POOL_CONF_UNUSABLE in dict(core.problems())


def test_a_job_is_announced_followed_and_kept(core: LiveSystem) -> None:
    seen = Recorder()
    core.subscribe(seen)

    async def scenario() -> JobSnapshot:
        await core.start()
        assert core.data_disk().state is DataState.ABSENT  # no pool.conf
        started = core.start_data_lock(stop_incus=False)
        assert started.state is JobState.RUNNING and started.kind is JobKind.DATA_LOCK
        await seen.a_job_ended.wait()
        return started

    started = asyncio.run(scenario())
    assert seen.said("started") == [started]
    finished = seen.said("finished")
    assert len(finished) == 1 and finished[0] is not None
    assert finished[0].number == started.number
    assert finished[0].state is JobState.FAILED and finished[0].error_name == "NotFound"
    assert finished[0].phase is JobPhase.CHECKING
    assert seen.calls.index(("finished", finished[0])) < len(seen.calls) - 1
    assert seen.calls[-1] == ("state", None)  # told after the job ended, as the bus shows
    assert core.data_disk().last_job == core.manager().jobs[0] == JobSnapshot.of(
        core.jobs.last[JobKind.DATA_LOCK])
    assert not core.cancel_job(started.number)  # finished: nothing to cancel
    assert not core.cancel_job(started.number + 100)  # never was


def test_a_boot_that_never_completes_is_rebooted(core: LiveSystem,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "uptime", lambda: 10_000.0)  # the deadline passed long ago
    init = FakeInit()

    async def scenario() -> None:
        await core.start()
        await core._boot_deadline(init)

    asyncio.run(scenario())
    assert init.rebooted == 1 and core.manager().boot_deadline == 0


def test_a_boot_marked_good_while_systemd_is_asked_why_is_not_rebooted(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    # The deadline passed, and the boot completed while anklumed asked systemd
    # which units were still starting: the reboot must not follow.
    monkeypatch.setattr(system, "uptime", lambda: 10_000.0)  # the deadline passed long ago
    init = FakeInit()

    async def completed_meanwhile() -> list[str]:
        await core.mark_good()
        return []

    monkeypatch.setattr(init, "waiting_jobs", completed_meanwhile)

    async def scenario() -> None:
        await core.start()
        await core._boot_deadline(init)

    asyncio.run(scenario())
    assert core.marked_good.is_set() and init.rebooted == 0


class SlowInit(FakeInit):
    """FAKE systemd that is busy at first: its first ``slow`` answers do not
    come within the bus's timeout (PID 1 starting many units on a slow
    machine, as under TCG)."""

    def __init__(self, slow: int) -> None:
        super().__init__()
        self.slow = slow
        self.asked = 0

    def _busy(self) -> None:
        self.asked += 1
        if self.asked <= self.slow:
            raise TimeoutError

    async def available(self) -> bool:
        self._busy()
        return True

    async def when_active(self, unit: str, action: Callable[[], Awaitable[None]]) -> None:
        self._busy()
        assert unit == system.BOOT_COMPLETE
        await action()

    async def reboot(self) -> None:
        self._busy()
        self.rebooted += 1


def test_a_busy_systemd_is_asked_again_and_the_boot_is_marked_good(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given up after one timeout, the boot would never be marked good: the
    # deadline would reboot it as a failed attempt, and three such boots
    # would roll a good OS back.
    monkeypatch.setattr(system, "SYSTEMD_RETRY", 0.01)
    init = SlowInit(slow=3)  # available() once, when_active() twice

    async def scenario() -> None:
        await core.start()
        await core._follow_boot_complete(init)

    asyncio.run(scenario())
    assert init.asked == 5 and core.manager().boot.marked_good


def test_a_systemd_that_refuses_is_not_asked_for_ever(core: LiveSystem) -> None:
    init = FakeInit()

    async def refused(unit: str, action: Callable[[], Awaitable[None]]) -> None:
        raise OSError("systemd LoadUnit: org.freedesktop.DBus.Error.AccessDenied")

    async def present() -> bool:
        return True

    init.available = present  # type: ignore[method-assign]
    init.when_active = refused  # type: ignore[method-assign]

    async def scenario() -> None:
        await core.start()
        await asyncio.wait_for(core._follow_boot_complete(init), 5)

    asyncio.run(scenario())
    assert not core.manager().boot.marked_good  # MarkGood is left to do it


def test_the_deadline_reboot_is_asked_again_of_a_busy_systemd(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "uptime", lambda: 10_000.0)  # the deadline passed long ago
    monkeypatch.setattr(system, "SYSTEMD_RETRY", 0.01)
    init = SlowInit(slow=2)

    async def scenario() -> None:
        await core.start()
        await core._boot_deadline(init)

    asyncio.run(scenario())
    assert init.rebooted == 1


class Blocked(Exception):
    """Raised by anything that would run a program or touch a file."""


@contextlib.contextmanager
def nothing_but_memory() -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Blocked(f"{args[:1]!r}")

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"),
                            (os, "lstat"), (os, "scandir"), (os, "listdir"),
                            (subprocess, "run"), (subprocess, "Popen"), (command, "run")):
            patch.setattr(owner, name, refuse)
        yield


def test_snapshots_and_their_properties_read_memory_only(
        core: LiveSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # FAKE: a disk set up from another stick (its blkid finds nothing: no such node).
    other = Disk(name="sdz", device=tmp_path / "sdz", size=1 << 30, fstype="crypto_LUKS",
                 label=f"{LABEL_PREFIX}tank")
    monkeypatch.setattr(core.data, "candidates", lambda: [other])
    seen = Recorder()
    core.subscribe(seen)

    async def scenario() -> None:
        await core.start()
        core.start_data_lock(stop_incus=False)  # a job to show; its end probes the disks
        await seen.a_job_ended.wait()

    asyncio.run(scenario())
    # What the last looks found: the stick is plugged in, / is read from it.
    core.media_present, core.root = True, Backing(in_ram=False, disks=("stick",))
    with nothing_but_memory():
        with pytest.raises(Blocked), open(os.devnull):  # the guard is on
            pass
        manager = manager_properties(core.manager())
        slots = [slot_properties(core.slot(name)) for name in SlotName]
        data = data_disk_properties(core.data_disk())
        job = job_properties(core.manager().jobs[0])
    assert manager["BootedSlot"] == "A" and manager["BootMediaPresent"] is True
    assert not manager["SafeToRemove"]
    assert [s["Status"] for s in slots] == ["ok", "ok"]
    assert data["State"] == "absent" and data["LastJob"]["state"] == "failed"
    assert data["Adoptable"] == [[str(other.device), "tank", ""]]
    assert data["Candidates"][0][0] == "sdz"
    assert job["Kind"] == "data-lock"


def test_the_filesystems_are_published_with_the_disks_and_looked_at_again(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    # FAKE: a --zfs image whose zfs module is not loaded, then is.
    offered: list[tuple[Backend, ...]] = [(Backend.BTRFS,)]
    monkeypatch.setattr(core.data, "filesystems", lambda: offered[0])

    async def scenario() -> list[dict[str, Any]]:
        await core.start()
        seen = [data_disk_properties(core.data_disk())]
        await core.refresh_data()
        seen.append(data_disk_properties(core.data_disk()))
        offered[0] = (Backend.ZFS, Backend.BTRFS)
        await core.refresh_data()
        seen.append(data_disk_properties(core.data_disk()))
        offered[0] = (Backend.BTRFS,)  # Refresh looks at them alone, every time
        changes = len(recorder.said("state"))
        await core.refresh_filesystems()
        assert len(recorder.said("state")) == changes + 1
        return [*seen, data_disk_properties(core.data_disk())]

    recorder = Recorder()
    core.subscribe(recorder)
    before, probed, loaded, unloaded = asyncio.run(scenario())
    # Before the first probe nothing is known, which DisksProbed says.
    assert (before["DisksProbed"], before["Filesystems"]) == (False, [])
    assert (probed["DisksProbed"], probed["Filesystems"]) == (True, ["btrfs"])
    assert loaded["Filesystems"] == ["zfs", "btrfs"]
    assert unloaded["Filesystems"] == ["btrfs"]


def test_a_job_reports_only_the_phases_it_names() -> None:
    async def scenario() -> Job:
        job = Job(1, JobKind.UPDATE, asyncio.get_running_loop(), lambda _job: None)
        job.progress("writing", 1, 2)
        with pytest.raises(ValueError, match="wirting"):
            job.progress("wirting", 2, 2)  # a typo: refused where it is made
        return job

    job = asyncio.run(scenario())
    assert job.phase is JobPhase.WRITING and JobSnapshot.of(job).phase is JobPhase.WRITING


class LoopGuard:
    """Notes every file touched and program run on the event loop's thread
    (and refuses it); worker threads may do both."""

    def __init__(self) -> None:
        self.on_loop: list[str] = []

    def wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return real(*args, **kwargs)  # a worker thread
            self.on_loop.append(f"{name}{args[:1]!r}")
            raise Blocked(f"{name} on the event loop")
        return guarded


class FakeDevice:
    """FAKE uevent: what _on_uevent reads of a pyudev.Device."""

    action = "remove"
    sys_name = "sdz"


class FakeMonitor:
    """FAKE udev monitor: one event waiting, then none."""

    def __init__(self) -> None:
        self.waiting = [FakeDevice()]

    def poll(self, timeout: float) -> FakeDevice | None:
        return self.waiting.pop() if self.waiting else None


def test_the_event_loop_never_touches_a_file_or_runs_a_program(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "uptime", lambda: 10_000.0)  # the deadline has passed
    guard = LoopGuard()
    for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"),
                        (os, "lstat"), (os, "scandir"), (os, "listdir"),
                        (subprocess, "run"), (subprocess, "Popen")):
        monkeypatch.setattr(owner, name, guard.wrap(name, getattr(owner, name)))
    seen = Recorder()
    core.subscribe(seen)
    init = FakeInit()

    async def scenario() -> None:
        await core.start()
        core.run_background(init)  # the deadline, the first disk probe, the watch
        await core.mark_good()
        await core.rollback(force=False)
        core.start_data_lock(stop_incus=False)
        await seen.a_job_ended.wait()
        watching, core._udev_monitor = core._udev_monitor, FakeMonitor()
        core._on_uevent()  # a disk pulled: hold, look at the stick, refresh in 0.5 s
        core._udev_monitor = watching
        assert core._data_refresh is not None and core._media_look is not None
        await asyncio.gather(core._media_look, core._data_refresh)
        for name in SlotName:
            slot_properties(core.slot(name))
        manager_properties(core.manager())
        data_disk_properties(core.data_disk())
        await core.stop()

    asyncio.run(scenario())
    assert guard.on_loop == []
    assert init.rebooted == 1 and core.disks_probed
    assert core.manager().boot.primary is SlotName.B


def test_a_burst_of_block_events_looks_at_the_stick_at_most_twice(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    looks: list[BootStick | None] = []

    def look(found: BootStick | None) -> bool:
        looks.append(found)
        return False

    monkeypatch.setattr(core, "_media_now", look)

    async def scenario() -> None:
        await core.start()
        looks.clear()
        for _ in range(50):  # loop devices set up elsewhere on the machine
            core._udev_monitor = FakeMonitor()
            core._on_uevent()
        assert core._media_look is not None
        await core._media_look
        core._udev_monitor = None
        await core.stop()

    asyncio.run(scenario())
    assert 1 <= len(looks) <= 2


def test_an_event_during_a_rescan_brings_one_more_rescan(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stick plugged back while the rescan that found it gone was still
    # listing the disks (seen in the service tier: the stick stayed unfound).
    rescans: list[int] = []

    async def rescan() -> None:
        rescans.append(len(rescans))
        if len(rescans) == 1:
            core._udev_monitor = FakeMonitor()
            core._on_uevent()

    async def scenario() -> None:
        await core.start()
        monkeypatch.setattr(core, "_recheck_stick", rescan)
        core._udev_monitor = FakeMonitor()
        core._on_uevent()
        assert core._data_refresh is not None
        await core._data_refresh
        core._udev_monitor = None
        await core.stop()

    asyncio.run(scenario())
    assert rescans == [0, 1]


def test_the_end_of_an_update_looks_at_the_stick_again(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    # Block events during an update skip the stick (the update holds the
    # slots): its end must look again, whether events came or not.
    looked = False

    async def scenario() -> None:
        nonlocal looked
        await core.start()
        seen = asyncio.Event()

        async def recheck() -> None:
            seen.set()

        monkeypatch.setattr(core, "_recheck_stick", recheck)
        core._start_job(JobKind.UPDATE, "slots", lambda job: asyncio.sleep(0, "done"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(seen.wait(), scaled(5))
        looked = seen.is_set()
        await core.stop()

    asyncio.run(scenario())
    assert looked


def test_an_older_disk_probe_ending_last_does_not_hide_a_newer_ones_disk(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    plugged = threading.Event()
    new_disk = CandidateDisk(name="sdz", device=Path("/dev/sdz"), model="FAKE", size=8 << 30,
                             bus="usb", serial="FAKE", contents=(), refused="",
                             refused_code=None, by_id="")

    def probe() -> tuple[tuple[CandidateDisk, ...], tuple[Adoptable, ...]]:
        if not plugged.is_set():  # began before the plug; slow (blkid on a busy disk)
            plugged.wait(scaled(5))
            time.sleep(0.3)
            return (), ()
        return (new_disk,), ()

    async def scenario() -> None:
        await core.start()
        monkeypatch.setattr(core, "_probe_disks", probe)
        older = asyncio.create_task(core.refresh_data())
        await asyncio.sleep(0.05)
        plugged.set()
        await core.refresh_data()
        await older

    asyncio.run(scenario())
    assert core.data_candidates == (new_disk,)


def test_the_disks_are_watched_before_the_stick_is_first_looked_at(
        core: LiveSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stick pulled between the first look and the watch's start would stay
    # "present": the watch opens first, and its events wait in the socket.
    order: list[str] = []
    locate = core._locate

    def watch() -> None:
        order.append("watch")

    def look() -> object:
        order.append("look")
        return locate()

    monkeypatch.setattr(system, "_block_monitor", watch)
    monkeypatch.setattr(core, "_locate", look)
    asyncio.run(core.start())
    assert order == ["watch", "look"]


def test_a_refused_slot_change_looks_at_the_stick_before_the_caller_hears_back(
        core: LiveSystem, persist: Path) -> None:
    (persist / "slots" / "B.meta").write_text("STATUS=empty\n")

    async def scenario() -> None:
        await core.start()
        core.media_present = True  # seen when it started; its node is gone since
        with pytest.raises(InvalidArgument, match="empty"):
            await core.set_primary(SlotName.B, force=True)
        assert not core.manager().media_present  # no uevent needed to say so

    asyncio.run(scenario())


def test_a_system_on_the_other_slots_kernel_is_a_problem_of_its_own_code(
        core: LiveSystem) -> None:
    # Not a damaged hand-off: the boot menu was behind PERSIST (boot-chain.md).
    core.handoff = parse_handoff("SLOT=A\nBOOT_COUNT=1\nROLLBACK=0\nVERITY=signed\n",
                                 "boot=anklume anklume.kernel=B")
    problems = core.manager().problems
    assert [code for code, _ in problems] == [ProblemCode.KERNEL_OF_OTHER_SLOT]
    assert "runs on slot B's kernel" in problems[0][1]
