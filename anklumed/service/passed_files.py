"""Files passed over the bus (D-Bus ``h``), and whose rights a path is read with.

With fd passing negotiated, any caller can attach descriptors to any
message, and dbus-fast 2.x never closes one: ``PassedFds``, the first
message handler, closes every descriptor that arrives, except those of a
well-formed call to a method that takes files (``FILE_METHODS``), which the
method owns from its first line (``take_passed``) and closes or hands to
its job. A call whose ``h`` index points past its descriptors is answered
InvalidArgument here (dbus-fast would pass None).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from contextvars import ContextVar

from dbus_fast import DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from anklumed.errors import ERROR_PREFIX, Failed, InvalidArgument
from anklumed.slots.local_files import Reader

log = logging.getLogger(__name__)

# (path, interface, member, signature) of the methods that take files.
FileMethod = tuple[str, str, str, str]
PASSED: ContextVar[tuple[int, ...]] = ContextVar("anklume_passed_fds", default=())


class PassedFds:
    """Message handler: owns every descriptor a message brings."""

    def __init__(self, methods: set[FileMethod]) -> None:
        self.methods = methods

    def __call__(self, msg: Message) -> bool:
        PASSED.set(())
        fds = tuple(msg.unix_fds or ())
        if not fds:
            return False
        key = (msg.path, msg.interface, msg.member, str(msg.signature))
        if msg.message_type == MessageType.METHOD_CALL and key in self.methods:
            if all(0 <= i < len(fds) for i in _indices(msg)):
                PASSED.set(fds)
                return False
            _close(fds)
            raise DBusError(ERROR_PREFIX + InvalidArgument.dbus_suffix,
                            "a file argument names a descriptor the call did not carry: "
                            "attach each file you name")
        _close(fds)  # nobody asked for them
        return False


def take_passed() -> list[int]:
    """The descriptors of the current call, now the caller's to close."""
    fds = list(PASSED.get())
    PASSED.set(())
    return fds


def close_all(fds: list[int]) -> None:
    _close(tuple(fds))


def _close(fds: tuple[int, ...]) -> None:
    for fd in set(fds):
        with contextlib.suppress(OSError):
            os.close(fd)


def _indices(msg: Message) -> list[int]:
    """Every ``h`` value of a call: top-level ``h`` arguments and ``h``
    variants in a top-level ``a{sv}`` (the shapes FILE_METHODS use)."""
    found: list[int] = []
    for arg, value in zip(msg.signature_tree.types, msg.body, strict=False):
        if arg.signature == "h":
            found.append(value)
        elif arg.signature == "a{sv}":
            found += [v.value for v in value.values() if v.signature == "h"]
    return found


async def caller_reader(bus: MessageBus, sender: str) -> Reader:
    """The caller's uid and groups, from the bus (which had them from the kernel)."""
    msg = Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                  interface="org.freedesktop.DBus", member="GetConnectionCredentials",
                  signature="s", body=[sender])
    try:
        reply = await asyncio.wait_for(bus.call(msg), 10)
    except (TimeoutError, OSError, EOFError):
        reply = None
    if reply is None or reply.message_type != MessageType.METHOD_RETURN:
        raise Failed("the bus did not say who is calling: try again")
    credentials: dict[str, Variant] = reply.body[0]
    uid = credentials.get("UnixUserID")
    if uid is None:
        raise Failed("the bus did not say who is calling: try again")
    # Without the groups (an older bus), group permissions grant nothing.
    groups = credentials.get("UnixGroupIDs")
    return Reader(uid=int(uid.value),
                  gids=frozenset(int(g) for g in groups.value) if groups else frozenset())
