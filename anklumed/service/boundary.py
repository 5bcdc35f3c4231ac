"""Where D-Bus meets the domain; every dbus-fast quirk is handled here, once.

Quirks of dbus-fast 2.x (from Debian 13's 2.44.1; each has a test in
tests/service/test_robustness.py unless named):
- a method handler is not given the message, so the caller's unique name and
  flags are captured by a message handler into a ContextVar, which the task
  running the method inherits (the task is created while the message is
  handled);
- an exception that is not a DBusError is sent to the caller with its
  traceback: every exception is converted here, and unexpected ones are logged
  in full (a few a minute) but answered with a short ``Error.Failed``; what
  gets past the boundary (a reply that does not fit its signature, a bug in a
  handler) is answered the same way by dbus_fixes.py's ``SendReply._exit``;
- a property value that does not match its signature is also answered with a
  traceback: published values are checked against their signatures here, and
  a bad one is logged and replaced by the previous value;
- signatures come from string annotations, which mypy cannot read: they are set
  through ``__signature__`` instead (dbus-fast reads them with
  ``inspect.signature`` when the decorator runs, compiled or not);
- Properties.GetAll builds and marshals every value again for every call,
  which was a third of the daemon's time with a hundred clients reading the
  status (bench/daemon.py): ``GetAllFromSnapshot`` answers it from bytes
  marshalled once per change of the snapshot, through ``PremarshalledReply``
  (``Message._marshall`` is a cpdef: a Python subclass overrides it);
- a string holding a NUL is marshalled as it is: the bus daemon then drops
  the whole connection, and a daemon that publishes it at start never takes
  its name (a lone surrogate, from bytes that are not UTF-8, makes the
  marshaller raise instead; test_bus_boundary.py, test_dbus_fuzz.py).
  Everything published (properties, signals, method returns, error messages)
  goes through ``published`` first;
- its socket writer drops the connection on a full socket:
  anklume_client/dbus_fixes.py (every connection's, the clients' too);
- descriptors passed with a message are never closed: passed_files.py;
- it keeps reading and dispatching calls while the daemon stops, even after
  disconnect() (buffered ones, during asyncio's shutdown): ``RefuseWhileStopping``.
dbus-next 0.2.3, used before, also logged every error reply with a traceback
(its SendReply.__exit__ did not return True): dbus-fast does not, and
``to_dbus_error`` writes one short line per refusal through a
``RateLimitedLog``.
Method arguments are never logged: they may hold secrets.
"""

import asyncio
import functools
import inspect
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from dbus_fast import DBusError, Message, MessageFlag, MessageType, PropertyAccess, Variant
from dbus_fast._private.constants import LITTLE_ENDIAN, PROTOCOL_VERSION, HeaderField
from dbus_fast._private.marshaller import Marshaller
from dbus_fast.aio import MessageBus
from dbus_fast.errors import SignatureBodyMismatchError
from dbus_fast.service import ServiceInterface, dbus_property, method
from dbus_fast.signature import SignatureTree, SignatureType
from dbus_fast.validators import is_object_path_valid

from anklumed.errors import (
    ERROR_PREFIX,
    AnklumeError,
    Busy,
    Cancelled,
    Failed,
    IncorrectPassphrase,
    InvalidArgument,
    NotAuthorized,
    NotFound,
    RefusedBootDevice,
    VerificationFailed,
)
from anklumed.service.passed_files import close_all, take_passed

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


class RefuseWhileStopping:
    """Message handler: once anklumed is stopping, its methods are refused
    with one clear sentence instead of being run. A call that arrives (or was
    already buffered) while the core ends its jobs, or during asyncio's own
    shutdown after the bus is closed, would otherwise reach a core whose
    thread pool and disk watch are gone. Properties are still answered: they
    are read from the last snapshot."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.stopping = stopping

    def __call__(self, msg: Message) -> bool:
        if (msg.message_type != MessageType.METHOD_CALL or not self.stopping()
                or not (msg.interface or "").startswith(BUS_NAME)):
            return False
        close_all(take_passed())  # the method that would own them never runs
        raise DBusError(ERROR_PREFIX + Failed.dbus_suffix,
                        "anklumed is stopping: try again once it has started again")


def current_caller() -> Caller:
    caller = CALLER.get()
    if caller is None or not caller.sender:
        raise Failed("the caller of this method is unknown")
    return caller


# ---- what may be published ---------------------------------------------------
# At most 4096 characters in one published string: PATH_MAX, since the
# longest legitimate values are a path or a URL (a slot's Source, a message
# quoting a device or a file). Nobody reads more, and a hand-edited PERSIST
# file or a long stderr tail must not make every status reply huge.
MAX_TEXT = 4096
# At most this many items in one published array or dict: a safety net, far
# above any legitimate list (disks, partitions, mounts, jobs). Problems has its
# own, smaller cap that says how many were left out (``capped``).
MAX_ITEMS = 1024
TRUNCATED = "…"
# Control characters (C0, DEL, C1), the Unicode line and paragraph separators
# and the bidirectional overrides: none is legitimate in a published string.
# Every message the daemon writes is one line, and a newline or an escape
# sequence in a Problem could forge a line of `anklumectl status` or drive the
# reader's terminal. Each is shown as a visible escape instead (\x00, \u202e).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# A lone surrogate (bytes decoded with surrogateescape) is not valid UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean_text(value: object, limit: int = MAX_TEXT) -> str:
    """``value`` as a string a bus and a terminal take safely: valid UTF-8, no
    control character, at most ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    text = _CONTROL.sub(_escape, _SURROGATE.sub("\ufffd", text))
    if len(text) > limit:
        text = text[: limit - len(TRUNCATED)] + TRUNCATED
    return text


def capped(items: Sequence[str], limit: int, each: int, what: str) -> list[str]:
    """At most ``limit`` items of at most ``each`` characters; a last line says
    how many were left out ("… and 12 more problems")."""
    kept = [clean_text(item, each) for item in items[:limit]]
    if len(items) > limit:
        kept.append(f"{TRUNCATED} and {len(items) - limit} more {what}")
    return kept


def record(**fields: tuple[str, Any]) -> dict[str, Variant]:
    """A named record (``a{sv}``) from ``key=(signature, value)``: the shape of
    every list of things the interface publishes since revision 2, so a key
    can be added without breaking a client (positional tuples cannot)."""
    return {key: Variant(signature, value) for key, (signature, value) in fields.items()}


@functools.lru_cache(maxsize=256)
def _signature_types(signature: str) -> tuple[SignatureType, ...]:
    return tuple(SignatureTree(signature).types)


def published(signature: str, value: Any) -> Any:
    """``value`` (one complete type) made safe to send: every string in it,
    however deeply nested, cleaned; every object path valid; arrays capped.
    A value of the wrong shape is returned as it is, for the signature check
    that follows to refuse."""
    (kind,) = _signature_types(signature)
    return _clean(kind, value)


def published_body(signature: str, values: Sequence[Any]) -> list[Any]:
    """A message body (several complete types: a signal's arguments)."""
    kinds = _signature_types(signature)
    if len(kinds) != len(values):
        return list(values)
    return [_clean(kind, value) for kind, value in zip(kinds, values, strict=True)]


def _clean(kind: SignatureType, value: Any) -> Any:
    code = kind.token
    if code == "s" and isinstance(value, str):
        return clean_text(value)
    if code == "o" and isinstance(value, str):
        return value if is_object_path_valid(value) else "/"
    if code == "g" and isinstance(value, str):
        return _valid_signature(value)
    if code == "v" and isinstance(value, Variant):
        return Variant(value.signature, published(value.signature, value.value))
    if code == "(" and isinstance(value, (list, tuple)):
        if len(value) != len(kind.children):
            return value
        return [_clean(k, v) for k, v in zip(kind.children, value, strict=True)]
    if code == "a":
        return _clean_array(kind.children[0], value)
    return value


def _clean_array(item: SignatureType, value: Any) -> Any:
    code = item.token
    if code == "y" or not isinstance(value, (list, tuple, dict)):
        return value  # bytes (a recovery key) are not text: sent as they are
    if code == "{" and isinstance(value, dict):
        key, val = item.children
        pairs = list(value.items())[:MAX_ITEMS]
        return {_clean(key, k): _clean(val, v) for k, v in pairs}
    return [_clean(item, v) for v in list(value)[:MAX_ITEMS]]


def _valid_signature(value: str) -> str:
    try:
        SignatureTree(value)
    except Exception:  # dbus-fast raises several types for a bad signature
        return ""
    return value


# ---- what the journal is told about a refused call ---------------------------
# The refusals a caller can provoke at will, by asking what it may not or
# what makes no sense: one short line each, without traceback.
EXPECTED_REFUSALS: tuple[type[AnklumeError], ...] = (
    NotAuthorized, InvalidArgument, NotFound, Busy, IncorrectPassphrase,
    RefusedBootDevice, Cancelled, VerificationFailed,
)


FLUSH_NAMED = 10  # callers named one by one in a flush; the rest summed up


class _Bucket:
    __slots__ = ("stamp", "suppressed", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens, self.stamp, self.suppressed = tokens, stamp, 0


class RateLimitedLog:
    """Lines per key (a caller's unique name) through a token bucket: ``burst``
    at once, then one every ``period`` seconds; a global bucket bounds the sum
    over many keys (a flooder may open many connections). Lines over the
    limit are counted, and the count is written as one line ("N more … from
    :1.42 suppressed") with the key's next line, or ``period`` seconds after
    the first suppressed one, whichever comes first."""

    def __init__(self, logger: logging.Logger, what: str, burst: int = 5,
                 period: float = 10.0, total_burst: int = 50, total_period: float = 1.0,
                 max_keys: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.what = logger, what
        self.burst, self.period = burst, period
        self.total_burst, self.total_period = total_burst, total_period
        self.max_keys, self.clock = max_keys, clock
        self._keys: OrderedDict[str, _Bucket] = OrderedDict()
        self._total = _Bucket(total_burst, clock())
        # Suppressed lines of callers forgotten to make room: counted together.
        self._forgotten = _Bucket(0, 0.0)
        self._flush_scheduled = False

    def log(self, key: str, level: int, msg: str, *args: Any,
            exc_info: BaseException | None = None) -> bool:
        """Write the line if ``key`` may; True if it was written."""
        now = self.clock()
        bucket = self._bucket(key, now)
        self._refill(bucket, now, self.burst, self.period)
        self._refill(self._total, now, self.total_burst, self.total_period)
        if bucket.tokens < 1 or self._total.tokens < 1:
            bucket.suppressed += 1
            self._schedule_flush()
            return False
        bucket.tokens -= 1
        self._total.tokens -= 1
        self._write_suppressed(key, bucket)
        self._write_suppressed("other callers", self._forgotten)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def flush(self) -> None:
        """Write the counts of suppressed lines: the first callers' one by one,
        the others' (and the forgotten callers') as one line."""
        self._flush_scheduled = False
        noisy = [(key, b) for key, b in self._keys.items() if b.suppressed]
        for key, bucket in noisy[:FLUSH_NAMED]:
            self._write_suppressed(key, bucket)
        for _, bucket in noisy[FLUSH_NAMED:]:
            self._forgotten.suppressed += bucket.suppressed
            bucket.suppressed = 0
        self._write_suppressed("other callers", self._forgotten)

    def _write_suppressed(self, key: str, bucket: _Bucket) -> None:
        if bucket.suppressed:
            self.logger.warning("%d more %s from %s suppressed", bucket.suppressed,
                                self.what, key)
            bucket.suppressed = 0

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._keys.get(key)
        if bucket is None:
            if len(self._keys) >= self.max_keys:
                _, old = self._keys.popitem(last=False)
                self._forgotten.suppressed += old.suppressed
            bucket = self._keys[key] = _Bucket(self.burst, now)
        else:
            self._keys.move_to_end(key)
        return bucket

    @staticmethod
    def _refill(bucket: _Bucket, now: float, burst: int, period: float) -> None:
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) / period)
        bucket.stamp = now

    def _schedule_flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a unit test): written with the key's next line
        self._flush_scheduled = True
        loop.call_later(self.period, self.flush)


REFUSALS = RateLimitedLog(log, "refusals")
# A bug can be triggered at will too: its traceback is wanted, but not
# ten thousand times.
UNEXPECTED = RateLimitedLog(log, "unexpected errors", burst=3, period=60.0,
                            total_burst=10, total_period=60.0)


def _sender() -> str:
    caller = CALLER.get()
    return caller.sender if caller is not None and caller.sender else "an unknown caller"


def to_dbus_error(e: BaseException, what: str) -> DBusError:
    """The one translation from any exception to what a caller may see."""
    if isinstance(e, DBusError):
        return DBusError(e.type, clean_text(e.text))
    message = clean_text(e) if isinstance(e, AnklumeError) else ""
    if isinstance(e, EXPECTED_REFUSALS):
        REFUSALS.log(_sender(), logging.INFO, "%s from %s refused: %s: %s", what, _sender(),
                     type(e).__name__, clean_text(message, 200))
        return DBusError(e.dbus_name, message)
    if isinstance(e, AnklumeError):  # Failed: the daemon could not do it, and says why
        REFUSALS.log(_sender(), logging.ERROR, "%s from %s failed: %s", what, _sender(),
                     clean_text(message, 500))
        return DBusError(e.dbus_name, message)
    UNEXPECTED.log("anklumed", logging.ERROR, "%s failed unexpectedly", what, exc_info=e)
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
                return published(returns, await fn(self, *values)) if returns else (
                    await fn(self, *values))
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


class StateInterface(ServiceInterface):
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
            try:
                value = published(signature, new.get(name))
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
    path) falls through to dbus-fast, which also answers the errors."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    def __call__(self, msg: Message) -> bool:
        if (msg.message_type != MessageType.METHOD_CALL or msg.member != "GetAll"
                or msg.interface != PROPERTIES_IFACE or msg.signature != "s"):
            return False
        iface = self._find(msg.path or "", msg.body[0])
        if iface is None:
            return False
        try:
            reply = PremarshalledReply(msg, "a{sv}", iface.marshalled_values())
        except Exception:  # dbus-fast would send the traceback to the caller
            log.exception("GetAll of %s on %s", iface.name, msg.path)
            return False  # dbus-fast's own GetAll answers instead
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            # dbus-fast sends only an exact Message returned by a handler.
            self.bus.send(reply)
        return True

    def _find(self, path: str, name: str) -> StateInterface | None:
        iface = self.bus._path_exports.get(path, {}).get(name)
        return iface if isinstance(iface, StateInterface) else None


class PremarshalledReply(Message):
    """A method return whose body is already marshalled: only the header,
    which names the caller and its call, is marshalled for each reply. The
    same bytes as ``Message._marshall`` (tests/service/test_robustness.py)."""

    def __init__(self, call: Message, signature: str, body: bytes) -> None:
        super().__init__(message_type=MessageType.METHOD_RETURN, reply_serial=call.serial,
                         destination=call.sender, signature=signature)
        self.marshalled_body = body

    def _marshall(self, negotiate_unix_fd: bool) -> bytearray:  # a cpdef: overridable
        fields = [[HeaderField.REPLY_SERIAL.value, Variant("u", self.reply_serial)]]
        if self.destination:
            fields.append([HeaderField.DESTINATION.value, Variant("s", self.destination)])
        fields.append([HeaderField.SIGNATURE.value, Variant("g", self.signature)])
        header = Marshaller("yyyyuua(yv)", [
            LITTLE_ENDIAN, self.message_type.value, self.flags.value, PROTOCOL_VERSION,
            len(self.marshalled_body), self.serial, fields])
        header.marshall()
        header.align(8)
        return header.buffer + self.marshalled_body


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
