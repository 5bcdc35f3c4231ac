"""The tray's notifications on a real session bus (a private dbus-daemon
whose service directory offers org.freedesktop.Notifications for
activation, as mako's and Plasma's files do in an image with several
desktops): the tray never starts a notification daemon, says it could not
send while none runs, and is told when one takes the name
(anklume_desktop.tray.notices.Notifier)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from anklume_desktop.tray.notices import NOTIFICATIONS, Notice, Notifier
from devtools.desktop_session import SESSION_BUS, bus_daemon
from devtools.slowness import scaled

NOTICE = Notice("rolled-back", "The previous system was restored", "")


@pytest.fixture
def session_bus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The bus's address, and the file its activation of the name would create."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("no dbus-daemon on this machine")
    activated = tmp_path / "activated"
    services = tmp_path / "services"
    services.mkdir()
    # Stands for mako's file: what activating the name would start.
    (services / "org.freedesktop.Notifications.service").write_text(
        f"[D-BUS Service]\nName={NOTIFICATIONS}\nExec=/usr/bin/touch {activated}\n")
    config = tmp_path / "bus.conf"
    # The desktop tier's session bus, with activation from ``services``.
    me = pwd.getpwuid(os.getuid()).pw_name
    config.write_text(SESSION_BUS.format(socket=tmp_path / "bus", user=me).replace(
        "</busconfig>", f"<servicedir>{services}</servicedir>\n</busconfig>"))
    address, daemon = bus_daemon(config)
    try:
        yield address, activated
    finally:
        daemon.terminate()
        daemon.wait(scaled(10))


@pytest.fixture
async def buses(session_bus: tuple[str, Path]) -> AsyncIterator[tuple[MessageBus, MessageBus]]:
    """The tray's connection and the notification daemon's."""
    tray_bus = await MessageBus(bus_address=session_bus[0]).connect()
    daemon_bus = await MessageBus(bus_address=session_bus[0]).connect()
    try:
        yield tray_bus, daemon_bus
    finally:
        tray_bus.disconnect()
        daemon_bus.disconnect()


class NotificationDaemon:
    """FAKE notification daemon: takes the name and answers Notify."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.summaries: list[str] = []
        bus.add_message_handler(self.handle)

    def handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type == MessageType.METHOD_CALL and msg.member == "Notify":
            self.summaries.append(str(msg.body[3]))
            return Message.new_method_return(msg, "u", [len(self.summaries)])
        return None


async def test_the_tray_never_starts_a_daemon_and_is_told_when_one_comes(
        session_bus: tuple[str, Path], buses: tuple[MessageBus, MessageBus]) -> None:
    # In the all image's KDE session the tray's first notice, sent before
    # Plasma's shell took the name, made dbus-daemon start mako (one of the
    # two files offering the name), which then kept it from Plasma.
    activated = session_bus[1]
    tray_bus, daemon_bus = buses
    came = asyncio.Event()
    notifier = Notifier(tray_bus, lambda action: None, came.set)
    await notifier.start()
    assert not await notifier.send(NOTICE)  # nobody to take it
    await asyncio.sleep(scaled(0.5))  # what an activation would have started by now
    assert not activated.exists(), "the tray's notice started the activatable daemon"
    daemon = NotificationDaemon(daemon_bus)
    await daemon_bus.request_name(NOTIFICATIONS)
    await asyncio.wait_for(came.wait(), scaled(10))
    assert await notifier.send(NOTICE)
    assert daemon.summaries == [NOTICE.summary]


async def test_a_daemon_already_there_takes_the_notices(
        session_bus: tuple[str, Path], buses: tuple[MessageBus, MessageBus]) -> None:
    activated = session_bus[1]
    tray_bus, daemon_bus = buses
    daemon = NotificationDaemon(daemon_bus)
    await daemon_bus.request_name(NOTIFICATIONS)
    notifier = Notifier(tray_bus, lambda action: None)
    await notifier.start()
    assert await notifier.send(NOTICE)
    assert daemon.summaries == [NOTICE.summary]
    assert not activated.exists()


async def until(done: Callable[[], bool]) -> None:
    """Until ``done()``: state a callback sets, with no event to wait on."""
    while not done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


class LateDaemon(NotificationDaemon):
    """FAKE notification daemon that answers only when told (Plasma's shell
    loading its panel at login on a loaded machine)."""

    def __init__(self, bus: MessageBus) -> None:
        super().__init__(bus)
        self.waiting: list[Message] = []

    def handle(self, msg: Message) -> Message | bool | None:
        """True: handled (dbus-fast would answer UnknownMethod), no answer yet."""
        if msg.message_type == MessageType.METHOD_CALL and msg.member == "Notify":
            self.waiting.append(msg)
            return True
        return False

    async def answer(self, notification_id: int) -> None:
        for msg in self.waiting:
            await self.bus.send(Message.new_method_return(msg, "u", [notification_id]))


async def test_a_notice_the_daemon_answers_late_is_taken_and_keeps_its_action(
        buses: tuple[MessageBus, MessageBus]) -> None:
    # The desktops tier's KDE boot: plasmashell owned the name, the tray's
    # notice went out and was shown, but the shell answered after the tray's
    # wait, which took it as not sent and never announced it.
    tray_bus, daemon_bus = buses
    daemon = LateDaemon(daemon_bus)
    await daemon_bus.request_name(NOTIFICATIONS)
    picked: list[str] = []
    action = asyncio.Event()

    def on_action(name: str) -> None:
        picked.append(name)
        action.set()
    notifier = Notifier(tray_bus, on_action)
    notifier.answer_wait = 0.1  # short on purpose: the daemon answers only when told
    await notifier.start()
    ready = Notice("update-1", "The update is ready", "", actions=(("reboot", "Reboot now"),))
    assert await notifier.send(ready)
    await daemon.answer(7)
    await asyncio.wait_for(until(lambda: 7 in notifier.sent), scaled(10))
    assert notifier.sent == {7: ready}
    await daemon_bus.send(Message.new_signal(
        "/org/freedesktop/Notifications", NOTIFICATIONS, "ActionInvoked", "us", [7, "reboot"]))
    await asyncio.wait_for(action.wait(), scaled(10))
    assert picked == ["reboot"]
