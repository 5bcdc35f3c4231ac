"""One connection to anklumed on the system bus (dbus-fast, asyncio).

Every failure is a ClientError, never another exception: a bad address, a
bus that cannot be reached, a call that gets no answer in time, and a bus
or daemon that goes away during a call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, InvalidAddressError, InvalidObjectPathError

from anklume_client import dbus_fixes as _dbus_fixes  # every connection needs them
from anklume_client.errors import (
    DISCONNECTED,
    INCOMPATIBLE,
    TIMEOUT,
    UNREACHABLE,
    USAGE,
    ClientError,
)
from anklume_client.interface import BUS_NAME, PROPERTIES_IFACE

CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 30.0
INTERACTIVE_TIMEOUT = 330.0  # longer than the daemon's own wait for a password
DBUS_NAME = DBUS_IFACE = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"

SignalHandler = Callable[[Message], None]


def unwrap(value: Any) -> Any:
    """Plain Python values from what dbus-fast unmarshalled (Variants opened)."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def lost() -> ClientError:
    return ClientError(DISCONNECTED, "the connection to anklumed was lost during the call "
                       "(the daemon or the system bus stopped); check with: anklumectl status")


class Connection:
    """``interactive``: mutating calls may let polkit ask for a password."""

    def __init__(self, bus: MessageBus, interactive: bool) -> None:
        self.bus = bus
        self.interactive = interactive
        # The daemon's serial of the last reply: signals sent after it have higher ones.
        self.last_serial = 0

    @classmethod
    async def connect(cls, address: str | None = None, interactive: bool = False) -> Any:
        """The system bus, or ``address``. Unix fds are negotiated: a local
        update bundle is passed open (Manager.UpdateFromFiles)."""
        why = _dbus_fixes.refusal()
        if why is not None:
            raise ClientError(INCOMPATIBLE, why)
        try:
            bus = MessageBus(bus_address=address, negotiate_unix_fd=True) if address \
                else MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        except InvalidAddressError:
            raise ClientError(USAGE, f"{address!r} is not a D-Bus address (like "
                              "unix:path=/run/dbus/system_bus_socket): fix --bus") from None
        except OSError as e:  # dbus-fast opens the socket here already (no such file…)
            raise ClientError(UNREACHABLE, f"cannot reach the system bus: {e}") from None
        try:
            return cls(await asyncio.wait_for(bus.connect(), CONNECT_TIMEOUT), interactive)
        except (OSError, TimeoutError, InvalidAddressError, AuthError, EOFError) as e:
            raise ClientError(UNREACHABLE, f"cannot reach the system bus: {e}") from None

    async def close(self) -> None:
        if self.bus.connected:  # dbus-fast logs a traceback for a closed one
            self.bus.disconnect()
        with contextlib.suppress(Exception):  # the reader's EOF on our own hang-up
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def call(self, path: str, iface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, mutating: bool = False,
                   unix_fds: list[int] | None = None, destination: str = BUS_NAME
                   ) -> list[Any]:
        """The reply's values, unwrapped. ``h`` values in ``body`` are indices
        into ``unix_fds``."""
        flags = MessageFlag.NONE
        if mutating and self.interactive:
            flags |= MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
        try:
            msg = Message(destination=destination, path=path, interface=iface, member=member,
                          signature=signature, body=body or [], flags=flags,
                          unix_fds=unix_fds or [])
        except InvalidObjectPathError:
            raise ClientError(USAGE, f"{path[:80]!r} is not an object path "
                              "(like /org/anklume/Live1/job/1)") from None
        reply = await self._send(msg, INTERACTIVE_TIMEOUT if mutating else CALL_TIMEOUT)
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise ClientError(reply.error_name or "", str(text))
        self.last_serial = reply.serial
        return [unwrap(v) for v in reply.body]

    async def _send(self, msg: Message, wait: float) -> Message:
        if not self.bus.connected:
            raise lost()
        try:
            reply = await asyncio.wait_for(self.bus.call(msg), wait)
        except TimeoutError:
            raise ClientError(TIMEOUT, "anklumed did not answer in time") from None
        except (OSError, EOFError, ValueError):
            # dbus-fast fails every pending call with the reader's error
            # (EOFError, ConnectionResetError…) when the connection ends.
            raise lost() from None
        if reply is None:
            raise lost()
        return reply

    async def get_all(self, path: str, iface: str) -> dict[str, Any]:
        return (await self.get_all_serial(path, iface))[0]

    async def get_all_serial(self, path: str, iface: str) -> tuple[dict[str, Any], int]:
        """The properties, and the serial the daemon gave its reply: a
        PropertiesChanged with a lower serial is older than what was read."""
        (props,) = await self.call(path, PROPERTIES_IFACE, "GetAll", "s", [iface])
        return props, self.last_serial

    # ---- signals -------------------------------------------------------------
    async def owner(self) -> str:
        """The unique name that owns org.anklume.Live1 now: signals come from
        it. Asked each time, never kept: a connection outlives a restart of
        anklumed (the tray's does), and the old name sends nothing more."""
        (owner,) = await self.call(DBUS_PATH, DBUS_IFACE, "GetNameOwner", "s", [BUS_NAME],
                                   destination=DBUS_NAME)
        return str(owner)

    async def subscribe(self, path: str, iface: str, member: str,
                        handler: SignalHandler) -> Callable[[], None]:
        """Call ``handler`` with each ``iface.member`` signal anklumed sends
        from ``path``; returns what undoes it. The match rule is added before
        this returns: read the state after it, and no change is missed."""
        owner = await self.owner()
        rule = (f"type='signal',sender='{BUS_NAME}',path='{path}',interface='{iface}',"
                f"member='{member}'")
        return await self._match(rule, lambda msg: (
            msg.sender == owner and msg.path == path and msg.interface == iface
            and msg.member == member), handler)

    async def watch_gone(self, on_gone: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_gone`` when anklumed's connection ends (its unique name
        loses its owner: the daemon stopped or died), and returns what undoes
        it. A follower waits for signals, no call of it is pending: without
        this it would wait for ever for a daemon that is gone. Added before
        this returns: a call made after it fails, or the end is heard."""
        owner = await self.owner()
        rule = (f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_IFACE}',"
                f"member='NameOwnerChanged',arg0='{owner}'")
        return await self._match(rule, lambda msg: (
            msg.sender == DBUS_NAME and msg.member == "NameOwnerChanged"
            and msg.body[:1] == [owner] and msg.body[2:] == [""]), lambda _msg: on_gone())

    async def _match(self, rule: str, wanted: Callable[[Message], bool],
                     handler: SignalHandler) -> Callable[[], None]:
        """``handler`` with each signal ``wanted`` accepts, once the bus sends
        what ``rule`` matches; returns what undoes it."""
        def on_message(msg: Message) -> None:
            if msg.message_type == MessageType.SIGNAL and wanted(msg):
                handler(msg)

        self.bus.add_message_handler(on_message)
        try:
            await self.call(DBUS_PATH, DBUS_IFACE, "AddMatch", "s", [rule],
                            destination=DBUS_NAME)
        except BaseException:
            self.bus.remove_message_handler(on_message)
            raise

        def undo() -> None:
            self.bus.remove_message_handler(on_message)
            if self.bus.connected:  # the daemon drops the rule with the connection anyway
                self.bus.send(Message(destination=DBUS_NAME, path=DBUS_PATH, interface=DBUS_IFACE,
                                      member="RemoveMatch", signature="s", body=[rule],
                                      flags=MessageFlag.NO_REPLY_EXPECTED))
        return undo

    async def subscribe_properties(self, path: str, iface: str,
                                   handler: Callable[[dict[str, Any], int], None]
                                   ) -> Callable[[], None]:
        """``handler(changed, serial)`` on each PropertiesChanged of ``iface``
        (anklumed never invalidates: it sends every changed value)."""
        def on_signal(msg: Message) -> None:
            name, changed, _invalidated = msg.body
            if name == iface:
                handler(unwrap(changed), msg.serial)
        return await self.subscribe(path, PROPERTIES_IFACE, "PropertiesChanged", on_signal)

    async def disconnected(self) -> None:
        """Returns when the connection ends (the bus or our side closed it).
        Cancelling the wait leaves the bus's own future alone (shield): dbus-fast
        hands every waiter that one future, and a cancelled one would fail
        ``close`` with CancelledError."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
