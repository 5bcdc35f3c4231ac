"""Talking to anklumed on the system bus."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, InvalidAddressError, InvalidObjectPathError

from anklumed.service import dbus_fixes as _dbus_fixes  # noqa: F401 - applies a fix

BUS_NAME = "org.anklume.Live1"
ROOT_PATH = "/org/anklume/Live1"
MANAGER_IFACE = "org.anklume.Live1.Manager"
SLOT_IFACE = "org.anklume.Live1.Slot"
CALL_TIMEOUT = 30.0
INTERACTIVE_TIMEOUT = 330.0  # longer than the daemon's own wait for a password


class ClientError(Exception):
    """A D-Bus error reply (name + message) or an unreachable daemon."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def unwrap(value: Any) -> Any:
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@contextlib.contextmanager
def polkit_agent(enabled: bool) -> Iterator[None]:
    """Like systemctl: a text-mode polkit agent for this terminal, unless one runs."""
    agent = shutil.which("pkttyagent")
    if not enabled or agent is None or os.geteuid() == 0 or not sys.stdin.isatty():
        yield
        return
    read, write = os.pipe()
    proc = subprocess.Popen([agent, "--notify-fd", str(write), "--fallback"], pass_fds=(write,))
    os.close(write)
    with os.fdopen(read) as ready:
        ready.read(1)  # pkttyagent closes the fd once it is registered
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(5)


class Client:
    def __init__(self, bus: MessageBus, interactive: bool) -> None:
        self.bus = bus
        self.interactive = interactive

    @classmethod
    async def connect(cls, address: str | None, interactive: bool) -> Client:
        # Unix fds: a local update bundle is passed open (Manager.UpdateFromFiles).
        try:
            bus = MessageBus(bus_address=address, negotiate_unix_fd=True) if address \
                else MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        except InvalidAddressError:
            raise ClientError("Usage", f"{address!r} is not a D-Bus address (like "
                              "unix:path=/run/dbus/system_bus_socket): fix --bus") from None
        try:
            return cls(await asyncio.wait_for(bus.connect(), 10), interactive)
        except (OSError, TimeoutError, InvalidAddressError, AuthError) as e:
            raise ClientError("Unreachable", f"cannot reach the system bus: {e}") from None

    async def close(self) -> None:
        if self.bus.connected:  # dbus-fast logs a traceback for a closed one
            self.bus.disconnect()
        with contextlib.suppress(Exception):  # the reader's EOF on our own hang-up
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def call(self, path: str, iface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, mutating: bool = False,
                   unix_fds: list[int] | None = None) -> list[Any]:
        """``h`` values in ``body`` are indices into ``unix_fds``."""
        flags = MessageFlag.NONE
        if mutating and self.interactive:
            flags |= MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
        try:
            msg = Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                          signature=signature, body=body or [], flags=flags,
                          unix_fds=unix_fds or [])
        except InvalidObjectPathError:
            raise ClientError("Usage", f"{path[:80]!r} is not an object path "
                              "(like /org/anklume/Live1/job/1)") from None
        timeout = INTERACTIVE_TIMEOUT if mutating else CALL_TIMEOUT
        try:
            reply = await asyncio.wait_for(self.bus.call(msg), timeout)
        except TimeoutError:
            raise ClientError("Timeout", "anklumed did not answer in time") from None
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            raise ClientError(reply.error_name or "", str(text))
        return [unwrap(v) for v in reply.body]

    async def status(self) -> dict[str, Any]:
        """The manager's properties, with the slots' under "Slots" (two calls at once)."""
        props, managed = await asyncio.gather(
            self.call(ROOT_PATH, "org.freedesktop.DBus.Properties", "GetAll", "s",
                      [MANAGER_IFACE]),
            self.call(ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"),
        )
        slots = {ifaces[SLOT_IFACE]["Name"]: ifaces[SLOT_IFACE]
                 for _path, ifaces in sorted(managed[0].items()) if SLOT_IFACE in ifaces}
        return {**props[0], "Slots": slots}

    async def reboot(self) -> None:
        """Through logind, which asks polkit as any desktop would."""
        flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if self.interactive else \
            MessageFlag.NONE
        msg = Message(destination="org.freedesktop.login1", path="/org/freedesktop/login1",
                      interface="org.freedesktop.login1.Manager", member="Reboot",
                      signature="b", body=[self.interactive], flags=flags)
        reply = await asyncio.wait_for(self.bus.call(msg), INTERACTIVE_TIMEOUT)
        if reply is not None and reply.message_type == MessageType.ERROR:
            raise ClientError(reply.error_name or "", str(reply.body[0] if reply.body else ""))

    async def manager(self, member: str, signature: str = "", *body: Any) -> list[Any]:
        return await self.call(ROOT_PATH, MANAGER_IFACE, member, signature, list(body),
                               mutating=True)
