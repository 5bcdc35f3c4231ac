"""When the tray's item registers with the StatusNotifierWatcher, on a real
session bus (a private dbus-daemon) with a FAKE watcher that behaves as
waybar's does at its start: the watcher's name is taken before its own host
has registered with it, and an item registered in between is shown by no
bar (seen on a fast boot of the image, 2026-12-04). The item waits for a
host, and registers anyway when none comes (anklume_desktop.tray.sni)."""

from __future__ import annotations

import asyncio

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from anklume_desktop.tray import sni
from anklume_desktop.tray.view import view
from devtools.slowness import scaled

# The bus, and two connections to it (the tray's, the watcher's), as fixtures.
from tests.unit.test_tray_notifier import buses, session_bus  # noqa: F401


class Watcher:
    """FAKE StatusNotifierWatcher: says whether a host registered, records
    the items registered, and signals a host's coming as waybar's does."""

    def __init__(self, bus: MessageBus, has_host: bool) -> None:
        self.bus = bus
        self.has_host = has_host
        self.items: list[str] = []
        self.changed = asyncio.Event()
        bus.add_message_handler(self.handle)

    def handle(self, msg: Message) -> Message | None:
        if msg.message_type != MessageType.METHOD_CALL or msg.path != sni.WATCHER_PATH:
            return None
        if msg.member == "Get" and msg.body[1] == "IsStatusNotifierHostRegistered":
            return Message.new_method_return(msg, "v", [Variant("b", self.has_host)])
        if msg.member == "RegisterStatusNotifierItem":
            self.items.append(msg.body[0])
            self.changed.set()
            return Message.new_method_return(msg)
        return None

    def host_registers(self) -> None:
        self.has_host = True
        self.bus.send(Message.new_signal(sni.WATCHER_PATH, sni.WATCHER, sni.HOST_REGISTERED))

    async def registered(self, within: float) -> list[str]:
        await asyncio.wait_for(self.changed.wait(), within)
        return self.items


async def started_item(tray_bus: MessageBus) -> sni.TrayItem:
    item = sni.TrayItem(tray_bus, view(None, None), lambda action: None)
    await item.start()
    return item


async def test_the_item_waits_for_the_watchers_host_before_registering(
        buses: tuple[MessageBus, MessageBus],  # noqa: F811 - the fixture
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sni, "HOST_WAIT", 3600.0)  # the host's signal, not the time, decides
    tray_bus, watcher_bus = buses
    watcher = Watcher(watcher_bus, has_host=False)
    await watcher_bus.request_name(sni.WATCHER)
    item = await started_item(tray_bus)
    await asyncio.sleep(scaled(1))  # a bar's host registers within this (TCG)
    assert watcher.items == [], "registered before the watcher had a host to show the item"
    watcher.host_registers()
    assert await watcher.registered(scaled(10)) == [item.name]


@pytest.mark.parametrize(("has_host", "host_wait"), [
    (True, 3600.0),  # a bar already there: at once
    (False, 0.5),  # a host that shows items without registering as one: HOST_WAIT later
])
async def test_the_item_registers_without_a_hosts_signal(
        buses: tuple[MessageBus, MessageBus], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        has_host: bool, host_wait: float) -> None:
    monkeypatch.setattr(sni, "HOST_WAIT", host_wait)
    tray_bus, watcher_bus = buses
    watcher = Watcher(watcher_bus, has_host)
    await watcher_bus.request_name(sni.WATCHER)
    item = await started_item(tray_bus)
    assert await watcher.registered(scaled(10)) == [item.name]


async def test_a_watcher_that_comes_later_gets_the_item_once_its_host_is_there(
        buses: tuple[MessageBus, MessageBus],  # noqa: F811 - the fixture
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The tray started before any bar (the waybar restart of the desktop tier).
    monkeypatch.setattr(sni, "HOST_WAIT", 3600.0)
    tray_bus, watcher_bus = buses
    item = await started_item(tray_bus)
    await asyncio.sleep(scaled(0.5))  # no watcher: nothing to register with yet
    watcher = Watcher(watcher_bus, has_host=False)
    await watcher_bus.request_name(sni.WATCHER)
    await asyncio.sleep(scaled(1))
    assert watcher.items == []
    watcher.host_registers()
    assert await watcher.registered(scaled(10)) == [item.name]


async def test_a_watcher_that_does_not_answer_is_one_line_in_the_log(
        buses: tuple[MessageBus, MessageBus],  # noqa: F811 - the fixture
        caplog: pytest.LogCaptureFixture) -> None:
    tray_bus, _watcher_bus = buses
    item = sni.TrayItem(tray_bus, view(None, None), lambda action: None)

    async def no_answer(*args: object) -> Message:
        raise TimeoutError  # what asyncio.wait_for raises after its 10 s
    item._call = no_answer  # type: ignore[method-assign,assignment]
    caplog.set_level("INFO")
    item._soon(item.watcher_appeared())
    while item.tasks:  # noqa: ASYNC110 - the task's end is what is waited for
        await asyncio.sleep(0.01)
    assert "the watcher did not answer (TimeoutError)" in caplog.text
