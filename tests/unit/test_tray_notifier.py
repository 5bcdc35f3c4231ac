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
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from anklume_desktop.tray.notices import NOTIFICATIONS, Notice, Notifier
from devtools.desktop_session import SESSION_BUS
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
    read, write = os.pipe()
    daemon = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={config}",
                               f"--print-address={write}"], pass_fds=(write,),
                              stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as printed:
        address = printed.readline().strip()
    try:
        yield address, activated
    finally:
        daemon.terminate()
        daemon.wait(scaled(10))


class NotificationDaemon:
    """FAKE notification daemon: takes the name and answers Notify."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.summaries: list[str] = []
        bus.add_message_handler(self.handle)

    def handle(self, msg: Message) -> Message | None:
        if msg.message_type == MessageType.METHOD_CALL and msg.member == "Notify":
            self.summaries.append(str(msg.body[3]))
            return Message.new_method_return(msg, "u", [len(self.summaries)])
        return None


async def test_the_tray_never_starts_a_daemon_and_is_told_when_one_comes(
        session_bus: tuple[str, Path]) -> None:
    # In the all image's KDE session the tray's first notice, sent before
    # Plasma's shell took the name, made dbus-daemon start mako (one of the
    # two files offering the name), which then kept it from Plasma.
    address, activated = session_bus
    tray_bus = await MessageBus(bus_address=address).connect()
    daemon_bus = await MessageBus(bus_address=address).connect()
    try:
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
    finally:
        tray_bus.disconnect()
        daemon_bus.disconnect()


async def test_a_daemon_already_there_takes_the_notices(session_bus: tuple[str, Path]) -> None:
    address, activated = session_bus
    tray_bus = await MessageBus(bus_address=address).connect()
    daemon_bus = await MessageBus(bus_address=address).connect()
    try:
        daemon = NotificationDaemon(daemon_bus)
        await daemon_bus.request_name(NOTIFICATIONS)
        notifier = Notifier(tray_bus, lambda action: None)
        await notifier.start()
        assert await notifier.send(NOTICE)
        assert daemon.summaries == [NOTICE.summary]
        assert not activated.exists()
    finally:
        tray_bus.disconnect()
        daemon_bus.disconnect()
