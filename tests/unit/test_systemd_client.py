"""anklumed's systemd client (anklumed.service.systemd) against a FAKE bus."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant

from anklumed.service import systemd
from devtools.slowness import scaled


class FakeBus:
    """FAKE system bus: the unit becomes active while anklumed reads its state,
    so the change's signal comes during that read."""

    def __init__(self) -> None:
        self.handlers: list[Callable[[Message], None]] = []
        self.reads = 0

    def add_message_handler(self, handler: Callable[[Message], None]) -> None:
        self.handlers.append(handler)

    def remove_message_handler(self, handler: Callable[[Message], None]) -> None:
        self.handlers.remove(handler)

    def answer(self, msg: Message) -> list[Any]:
        if msg.member == "LoadUnit":
            return ["/unit/boot_2dcomplete_2etarget"]
        if msg.member == "Get":
            self.reads += 1
            if self.reads == 1:
                for handler in list(self.handlers):
                    handler(Message.new_signal("/unit/boot_2dcomplete_2etarget",
                                               systemd.PROPS, "PropertiesChanged"))
                return [Variant("s", "inactive")]
            return [Variant("s", "active")]
        return []


def test_a_change_signalled_during_the_state_read_is_not_lost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bus = FakeBus()

    async def call(_: object, msg: Message) -> Message:
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1,
                       signature="s" if msg.member == "LoadUnit" else "v" if
                       msg.member == "Get" else "", body=bus.answer(msg))
    monkeypatch.setattr(systemd, "call", call)
    monkeypatch.setattr(systemd, "MISSED_SIGNAL_NET", 3600)  # a lost signal would hang
    ran: list[str] = []

    async def action() -> None:
        ran.append("action")

    async def wait() -> None:
        client = systemd.Systemd(bus)  # type: ignore[arg-type]
        await asyncio.wait_for(client.when_active("boot-complete.target", action),
                               scaled(10))
    asyncio.run(wait())
    assert ran == ["action"] and bus.reads == 2


@pytest.mark.parametrize(("answer", "expected"), [
    ("error", False),  # no systemd on this bus: an error answer
    ("lost", False),  # the bus lost (polkit.call makes that a ConnectionError)
    ("late", TimeoutError),  # PID 1 busy: the caller asks again
])
def test_available_tells_absent_from_busy(monkeypatch: pytest.MonkeyPatch, answer: str,
                                          expected: bool | type[Exception]) -> None:
    async def call(_: object, msg: Message) -> Message:
        if answer == "late":
            raise TimeoutError
        if answer == "lost":
            raise ConnectionError("the system bus connection was lost")
        return Message(message_type=MessageType.ERROR, reply_serial=1, signature="s",
                       error_name="org.freedesktop.DBus.Error.ServiceUnknown", body=["none"])
    monkeypatch.setattr(systemd, "call", call)
    client = systemd.Systemd(None)  # type: ignore[arg-type]
    if expected is TimeoutError:
        with pytest.raises(TimeoutError):
            asyncio.run(client.available())
    else:
        assert asyncio.run(client.available()) is expected


def test_a_follow_that_timed_out_leaves_no_handler_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    # The core asks again after a timeout: each try must not leave its
    # signal handler on the bus.
    bus = FakeBus()

    async def call(_: object, msg: Message) -> Message:
        if msg.member == "AddMatch":
            raise TimeoutError
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1, signature="s",
                       body=bus.answer(msg))
    monkeypatch.setattr(systemd, "call", call)

    async def action() -> None:
        raise AssertionError("not reached")

    with pytest.raises(TimeoutError):
        asyncio.run(systemd.Systemd(bus).when_active(  # type: ignore[arg-type]
            "boot-complete.target", action))
    assert bus.handlers == []
