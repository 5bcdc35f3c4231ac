"""Where D-Bus meets the domain; every dbus-next quirk is handled here, once.

Quirks of dbus-next 0.2.3 (pinned; each has a test in tests/service/):
- a method handler is not given the message, so the caller's unique name and
  flags are captured by a message handler into a ContextVar, which the task
  running the method inherits;
- an exception that is not a DBusError is sent to the caller with its
  traceback: every exception is converted here, and unexpected ones are logged
  in full but answered with a short ``Error.Failed``;
- a property value that does not match its signature is also answered with a
  traceback: published values are checked against their signatures here, and
  a bad one is logged and replaced by the previous value;
- signatures come from string annotations, which mypy cannot read: they are set
  through ``__signature__`` instead;
- Properties.GetAll builds and marshals every value again for every call,
  which was a third of the daemon's time with a hundred clients reading the
  status (bench/daemon.py): ``GetAllFromSnapshot`` answers it from bytes
  marshalled once per change of the snapshot.
Method arguments are never logged: they may hold secrets.
"""

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from dbus_next import DBusError, Message, MessageFlag, MessageType, Variant
from dbus_next._private.constants import LITTLE_ENDIAN, PROTOCOL_VERSION, HeaderField
from dbus_next._private.marshaller import Marshaller
from dbus_next.aio import MessageBus
from dbus_next.errors import SignatureBodyMismatchError
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method

from anklumed.errors import AnklumeError, Failed

log = logging.getLogger(__name__)

BUS_NAME = "org.anklume.Live1"
ROOT_PATH = "/org/anklume/Live1"


@dataclass(frozen=True)
class Caller:
    sender: str
    flags: MessageFlag

    @property
    def interactive(self) -> bool:
        return bool(self.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)


CALLER: ContextVar[Caller | None] = ContextVar("anklume_caller", default=None)


def capture_caller(msg: Message) -> None:
    """Message handler: remember who called, for the method about to run."""
    if msg.message_type == MessageType.METHOD_CALL and (msg.interface or "").startswith(
        BUS_NAME
    ):
        CALLER.set(Caller(sender=msg.sender or "", flags=MessageFlag(msg.flags)))


def current_caller() -> Caller:
    caller = CALLER.get()
    if caller is None or not caller.sender:
        raise Failed("the caller of this method is unknown")
    return caller


def to_dbus_error(e: BaseException, what: str) -> DBusError:
    """The one translation from any exception to what a caller may see."""
    if isinstance(e, DBusError):
        return e
    if isinstance(e, AnklumeError):
        return DBusError(e.dbus_name, str(e))
    log.error("%s failed unexpectedly", what, exc_info=e)
    return DBusError(Failed().dbus_name, f"{what} failed inside anklumed; see its journal")


AsyncFn = Callable[..., Awaitable[Any]]


def dbus_method(
    args: tuple[tuple[str, str], ...] = (), returns: str = ""
) -> Callable[[AsyncFn], Any]:
    """Export an async method with explicit D-Bus signatures and safe errors."""

    def decorate(fn: AsyncFn) -> Any:
        @functools.wraps(fn)
        async def wrapper(self: Any, *values: Any) -> Any:
            try:
                return await fn(self, *values)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                raise to_dbus_error(e, fn.__name__) from None

        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
        params += [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_ONLY, annotation=sig)
            for name, sig in args
        ]
        wrapper.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            params, return_annotation=returns or inspect.Signature.empty
        )
        return method(name=fn.__name__)(wrapper)

    return decorate


def ro_property(name: str, signature: str) -> Any:
    """A read-only property served from the interface's published values."""

    def getter(self: "StateInterface") -> Any:
        return self.values[name]

    getter.__name__ = name
    getter.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)],
        return_annotation=signature,
    )
    return dbus_property(access=PropertyAccess.READ, name=name)(getter)


class StateInterface(ServiceInterface):  # type: ignore[misc]
    """An interface whose properties are a snapshot, published as a whole.

    Reads are served from memory (they never wait for a job or the stick);
    ``publish`` emits PropertiesChanged with exactly what changed.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.signatures = {
            p.name: p.signature for p in ServiceInterface._get_properties(self)
        }
        self.values: dict[str, Any] = {}
        self.values = self.checked(self.snapshot())
        self._marshalled: bytes | None = None

    def marshalled_values(self) -> bytes:
        """The body of a GetAll reply (``a{sv}``), marshalled once per change."""
        if self._marshalled is None:
            body = {k: Variant(self.signatures[k], v) for k, v in self.values.items()}
            self._marshalled = bytes(Marshaller("a{sv}", [body]).marshall())
        return self._marshalled

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def checked(self, new: dict[str, Any]) -> dict[str, Any]:
        """Keep only values that fit their D-Bus signature."""
        good: dict[str, Any] = {}
        for name, signature in self.signatures.items():
            value = new.get(name)
            try:
                Variant(signature, value)
            except (SignatureBodyMismatchError, ValueError, TypeError, KeyError):
                log.error("%s.%s: value does not fit %r; keeping the previous one",
                          self.name, name, signature)
                value = self.values.get(name, _empty(signature))
            good[name] = value
        return good

    def publish(self) -> None:
        new = self.checked(self.snapshot())
        changed = {k: v for k, v in new.items() if self.values.get(k) != v}
        self.values = new
        if changed:
            self._marshalled = None
            self.emit_properties_changed(changed)


PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"


class GetAllFromSnapshot:
    """Message handler: answer Properties.GetAll on a StateInterface from its
    marshalled snapshot. Anything else (Get, another interface, an unknown
    path) falls through to dbus-next, which also answers the errors."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    def __call__(self, msg: Message) -> bool:
        if (msg.message_type != MessageType.METHOD_CALL or msg.member != "GetAll"
                or msg.interface != PROPERTIES_IFACE or msg.signature != "s"):
            return False
        iface = self._find(msg.path, msg.body[0])
        if iface is None:
            return False
        try:
            reply = PremarshalledReply(msg, "a{sv}", iface.marshalled_values())
        except Exception:  # dbus-next would send the traceback to the caller
            log.exception("GetAll of %s on %s", iface.name, msg.path)
            return False  # dbus-next's own GetAll answers instead
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            # dbus-next sends only an exact Message returned by a handler.
            self.bus.send(reply)
        return True

    def _find(self, path: str, name: str) -> StateInterface | None:
        for iface in self.bus._path_exports.get(path, ()):
            if iface.name == name and isinstance(iface, StateInterface):
                return iface
        return None


class PremarshalledReply(Message):  # type: ignore[misc]
    """A method return whose body is already marshalled: only the header,
    which names the caller and its call, is marshalled for each reply. The
    same bytes as ``Message._marshall`` (tests/service/test_robustness.py)."""

    def __init__(self, call: Message, signature: str, body: bytes) -> None:
        super().__init__(message_type=MessageType.METHOD_RETURN, reply_serial=call.serial,
                         destination=call.sender, signature=signature)
        self.marshalled_body = body

    def _marshall(self, negotiate_unix_fd: bool = False) -> bytes:
        fields = [[HeaderField.REPLY_SERIAL.value, Variant("u", self.reply_serial)]]
        if self.destination:
            fields.append([HeaderField.DESTINATION.value, Variant("s", self.destination)])
        fields.append([HeaderField.SIGNATURE.value, Variant("g", self.signature)])
        header = Marshaller("yyyyuua(yv)", [
            LITTLE_ENDIAN, self.message_type.value, self.flags.value, PROTOCOL_VERSION,
            len(self.marshalled_body), self.serial, fields])
        header.marshall()
        header.align(8)
        return bytes(header.buffer) + self.marshalled_body


class DaemonInterface(StateInterface):
    """A state interface whose snapshot is read from the daemon."""

    IFACE = ""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        super().__init__(self.IFACE)


def _empty(signature: str) -> Any:
    if signature.startswith("a{"):
        return {}
    return {"s": "", "o": "/", "b": False, "d": 0.0, "a": [], "(": []}.get(signature[0], 0)
