"""The tray's loop over anklumed's state (anklume_desktop.tray.applet), with a
FAKE daemon: the order of its reads against the change signals."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from anklume_desktop.daemon import (
    BootState,
    Daemon,
    DaemonError,
    JobState,
    parse_data_disk,
    parse_status,
)
from anklume_desktop.tray import applet
from anklume_desktop.tray.notices import Memory, Notice
from anklume_desktop.tray.view import Action
from devtools.slowness import scaled

RUNNING = dataclasses.replace(
    parse_status({"BootState": "good", "BootedSlot": "A", "FallbackSlot": "B"}),
    update_running=True, last_update_job="/org/anklume/Live1/Job/2",
    last_update_state=JobState.RUNNING)
FINISHED = dataclasses.replace(RUNNING, update_running=False,
                               last_update_state=JobState.SUCCEEDED)
DATA = parse_data_disk({"State": "mounted", "Pool": "vault", "Encryption": "luks2"})


class FakeDaemon:
    """FAKE anklumed: its update ends while the tray is reading the state that
    still says it runs, so the end's signal comes during that read."""

    def __init__(self) -> None:
        self.changed: Callable[[], None] = lambda: None
        self.reads = 0

    async def watch(self, changed: Callable[[], None]) -> None:
        self.changed = changed

    async def status(self) -> Any:
        self.reads += 1
        if self.reads == 1:
            self.changed()  # the job's end, signalled before this read returns
            return RUNNING
        return FINISHED

    async def data_disk(self) -> Any:
        return DATA

    async def follow(self, job: str, progress: Callable[[Any], None]) -> None:
        await asyncio.Event().wait()  # the progress does not matter here

    async def close(self) -> None:
        pass


class Sent:
    def __init__(self) -> None:
        self.notices: list[Notice] = []
        self.some = asyncio.Event()

    async def send(self, notice: Notice) -> bool:
        self.notices.append(notice)
        self.some.set()
        return True


async def run_until_announced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    fake = FakeDaemon()

    async def connect(address: str | None = None) -> FakeDaemon:
        return fake
    monkeypatch.setattr(Daemon, "connect", connect)
    # No session bus: the parts that would use it are replaced below.
    tray = applet.Applet(None, None, Memory(tmp_path, boot_id="b1"))  # type: ignore[arg-type]
    sent = Sent()
    tray.notifier = sent  # type: ignore[assignment]
    tray.item.show = lambda view: None  # type: ignore[method-assign]
    loop = asyncio.create_task(tray.follow_daemon())
    with contextlib.suppress(TimeoutError):  # in-process: milliseconds on a quiet machine
        await asyncio.wait_for(sent.some.wait(), scaled(10))
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    return [n.summary for n in sent.notices]


def test_a_change_signalled_during_a_read_is_not_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in CI: the update's end came while the tray read the state that
    # still said "running"; the tray then waited for a change already made and
    # never said the update was ready.
    summaries = asyncio.run(run_until_announced(tmp_path, monkeypatch))
    assert summaries == ["The update is ready"]


class RestartingDaemon(FakeDaemon):
    """FAKE anklumed that dies during its update and, started again, runs a
    new update under the same job path (a new daemon numbers from 1 again)."""

    def __init__(self) -> None:
        super().__init__()
        self.followed: list[str] = []
        self.again = asyncio.Event()

    async def status(self) -> Any:
        self.reads += 1
        return RUNNING if self.reads <= 2 else FINISHED

    async def follow(self, job: str, progress: Callable[[Any], None]) -> None:
        self.followed.append(job)
        if len(self.followed) > 1:
            self.again.set()
            await asyncio.Event().wait()
        self.changed()  # the daemon's name changed owner
        raise DaemonError("disconnected", "the connection to anklumed was lost")


def test_a_new_update_under_the_path_of_one_that_ended_is_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tray's connection outlives a restart of anklumed; the first update's
    # follow ended with the daemon, and the new daemon's update has the same
    # path: it was taken for the one already followed, and showed no progress.
    fake = RestartingDaemon()

    async def scenario() -> None:
        async def connect(address: str | None = None) -> RestartingDaemon:
            return fake

        monkeypatch.setattr(Daemon, "connect", connect)
        tray = applet.Applet(None, None, Memory(tmp_path, boot_id="b1"))  # type: ignore[arg-type]
        tray.notifier = Sent()  # type: ignore[assignment]
        tray.item.show = lambda view: None  # type: ignore[method-assign]
        loop = asyncio.create_task(tray.follow_daemon())
        with contextlib.suppress(TimeoutError):  # in-process: milliseconds on a quiet machine
            await asyncio.wait_for(fake.again.wait(), scaled(10))
        for task in (loop, *tray.tasks):
            task.cancel()
        await asyncio.gather(loop, *tray.tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert fake.followed == [RUNNING.last_update_job] * 2


class ShellLate:
    """FAKE notification side: no daemon until ``comes()``, which tells the
    tray as the real Notifier does (its ``on_daemon``), as Plasma's shell
    takes the name some seconds after the tray's first notices."""

    def __init__(self, on_daemon: Callable[[], None]) -> None:
        self.on_daemon = on_daemon
        self.there = False
        self.taken: list[str] = []
        self.tried = asyncio.Event()
        self.took = asyncio.Event()

    async def send(self, notice: Notice) -> bool:
        self.tried.set()
        if not self.there:
            return False
        self.taken.append(notice.key)
        self.took.set()
        return True

    def comes(self) -> None:
        self.there = True
        self.on_daemon()


class Steady(FakeDaemon):
    """FAKE anklumed whose state does not change: a rollback happened at this boot."""

    async def status(self) -> Any:
        self.reads += 1
        return dataclasses.replace(FINISHED, boot_state=BootState.ROLLED_BACK,
                                   last_update_job="")


def test_a_notice_sent_before_the_daemon_came_goes_out_when_it_comes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The all image's KDE session: the tray's first notice came before
    # plasmashell owned the notifications' name. It was remembered as
    # announced though no daemon took it, and never sent again.
    fake = Steady()

    async def scenario() -> tuple[ShellLate, Memory]:
        async def connect(address: str | None = None) -> Steady:
            return fake

        monkeypatch.setattr(Daemon, "connect", connect)
        memory = Memory(tmp_path, boot_id="b1")
        tray = applet.Applet(None, None, memory)  # type: ignore[arg-type]
        late = ShellLate(tray.notifier.on_daemon)
        tray.notifier = late  # type: ignore[assignment]
        tray.item.show = lambda view: None  # type: ignore[method-assign]
        loop = asyncio.create_task(tray.follow_daemon())
        with contextlib.suppress(TimeoutError):  # in-process: milliseconds
            await asyncio.wait_for(late.tried.wait(), scaled(10))
            late.comes()
            await asyncio.wait_for(late.took.wait(), scaled(10))
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        return late, memory

    late, memory = asyncio.run(scenario())
    assert late.taken == ["rolled-back"]
    assert memory.keys == Memory(tmp_path, boot_id="b1").keys == {"rolled-back"}


class Rolls:
    """FAKE anklumed: the rollback is done."""

    async def rollback(self) -> str:
        return "B"


class GoneSession:
    """FAKE notifier on a session bus that went away (the session ending)."""

    async def send(self, notice: Notice) -> bool:
        raise ConnectionError("the session bus connection was lost")


def test_a_menu_action_that_fails_unexpectedly_is_one_line_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A click's work runs as a task of its own: an error it does not expect
    # (here its notice, the session bus gone) was left in the task, and
    # asyncio logged it as "Task exception was never retrieved" with a
    # traceback once the task was collected.
    unread: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: unread.append(context))
        tray = applet.Applet(None, None, Memory(tmp_path, boot_id="b1"))  # type: ignore[arg-type]
        tray.daemon = Rolls()  # type: ignore[assignment]
        tray.notifier = GoneSession()  # type: ignore[assignment]
        tray.act(Action.ROLLBACK)
        while tray.tasks:  # noqa: ASYNC110 - the task's end is what is waited for
            await asyncio.sleep(0.01)
        gc.collect()

    caplog.set_level("INFO")
    asyncio.run(scenario())
    assert unread == [], unread
    assert "the rollback failed unexpectedly (ConnectionError" in caplog.text, caplog.text
