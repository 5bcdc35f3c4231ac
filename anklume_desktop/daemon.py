"""The desktop clients' one way to anklumed: typed snapshots and calls.

Everything the guide and the tray know of the daemon comes through here, as
StrEnums and frozen dataclasses, never as bus dictionaries: when the typed
client library (``anklume_client``) lands, this file alone changes.

Codes, not English: the daemon is gaining reason codes (``StateReasonCodes``,
``ProblemCodes``, ``CandidateDisks`` with ``refused_code``, a job's
``ErrorCode``, the data disk's ``MessageCode``). Where it publishes them they
are used; where it does not yet, the older properties are read and the code is
derived (a refused disk without a code is ``Refusal.OTHER``, its sentence kept
for display).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, InvalidAddressError

BUS_NAME = "org.anklume.Live1"
ROOT_PATH = "/org/anklume/Live1"
DATA_PATH = "/org/anklume/Live1/data"
MANAGER_IFACE = "org.anklume.Live1.Manager"
DATA_IFACE = "org.anklume.Live1.DataDisk"
JOB_IFACE = "org.anklume.Live1.Job"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
ERROR_PREFIX = "org.anklume.Live1.Error."
CALL_TIMEOUT = 30.0
INTERACTIVE_TIMEOUT = 330.0  # longer than polkit's own wait for the person


class BootState(StrEnum):
    GOOD = "good"
    PENDING = "pending"
    ROLLED_BACK = "rolled-back"
    DEGRADED = "degraded"
    UNKNOWN = "unknown"


class DataState(StrEnum):
    ABSENT = "absent"
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    MOUNTED = "mounted"
    ERROR = "error"
    UNKNOWN = "unknown"


class JobState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Refusal(StrEnum):
    """Why a disk may not hold the data (the daemon's ``refused_code``)."""

    BOOT_STICK = "boot-stick"
    HOLDS_SYSTEM = "holds-system"
    MOUNTED = "mounted"
    HELD = "held"
    READ_ONLY = "read-only"
    TOO_SMALL = "too-small"
    OTHER = "other"  # a daemon without codes, or a code this client does not know


class Backend(StrEnum):
    BTRFS = "btrfs"
    ZFS = "zfs"


class Encryption(StrEnum):
    LUKS2 = "luks2"
    NONE = "none"


class DaemonError(Exception):
    """A refusal or failure: ``code`` a short word (``NotAuthorized``,
    ``IncorrectPassphrase``, ``Unreachable``...), ``message`` one sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Disk:
    name: str
    device: str
    model: str
    size: int
    bus: str
    contents: tuple[str, ...]
    refusal: Refusal | None
    refusal_text: str  # the daemon's sentence, for display only

    @property
    def usable(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True)
class AdoptableDisk:
    device: str
    pool: str
    luks_uuid: str


@dataclass(frozen=True)
class DataDisk:
    state: DataState
    pool: str
    encrypted: bool
    device: str
    message: str
    message_code: str  # empty when the daemon publishes none
    pulled: bool
    attempts_left: int
    probed: bool
    candidates: tuple[Disk, ...]
    adoptable: tuple[AdoptableDisk, ...]


@dataclass(frozen=True)
class Status:
    boot_state: BootState
    booted_slot: str
    primary_slot: str
    fallback_slot: str
    reasons: tuple[str, ...]  # sentences, for display
    reason_codes: tuple[str, ...]  # empty when the daemon publishes none
    problems: tuple[str, ...]
    problem_codes: tuple[str, ...]
    safe_to_remove: bool
    root_in_ram: bool
    update_running: bool
    last_update_job: str  # the last update job's path, "" when none
    last_update_state: JobState | None
    last_update_message: str


@dataclass(frozen=True)
class Progress:
    phase: str
    done: int
    total: int  # 0 when unknown


@dataclass(frozen=True)
class Outcome:
    state: JobState
    error_code: str  # the job's ErrorCode, else its ErrorName's short form; empty on success
    message: str


def unwrap(value: Any) -> Any:
    # anklumectl.client has the same, but importing it imports anklumed (its
    # dbus-fast patches); anklume_client will hold the one copy.
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


E = TypeVar("E", bound=StrEnum)


def _enum(kind: type[E], value: object, default: E) -> E:
    try:
        return kind(str(value))
    except ValueError:
        return default


def _refusal(code: str, text: str) -> Refusal | None:
    if not code and not text:
        return None
    return _enum(Refusal, code, Refusal.OTHER)


def parse_candidates(props: dict[str, Any]) -> tuple[Disk, ...]:
    """``CandidateDisks`` (named, with codes) when published, else ``Candidates``."""
    if "CandidateDisks" in props:
        return tuple(
            Disk(name=d["name"], device=d["device"], model=d.get("model", ""),
                 size=int(d.get("size", 0)), bus=d.get("bus", ""),
                 contents=tuple(d.get("contents", ())),
                 refusal=_refusal(d.get("refused_code", ""), d.get("refused", "")),
                 refusal_text=d.get("refused", ""))
            for d in props["CandidateDisks"])
    return tuple(
        Disk(name=name, device=device, model=model, size=int(size), bus=bus,
             contents=tuple(c for c in contents.split("; ") if c),
             refusal=_refusal("", refused), refusal_text=refused)
        for name, device, model, size, bus, _serial, contents, refused
        in props.get("Candidates", []))


def parse_adoptable(props: dict[str, Any]) -> tuple[AdoptableDisk, ...]:
    if "AdoptableDisks" in props:
        return tuple(AdoptableDisk(d["device"], d.get("pool", ""), d.get("luks_uuid", ""))
                     for d in props["AdoptableDisks"])
    return tuple(AdoptableDisk(device, pool, uuid)
                 for device, pool, uuid in props.get("Adoptable", []))


def parse_data_disk(props: dict[str, Any]) -> DataDisk:
    return DataDisk(
        state=_enum(DataState, props.get("State", ""), DataState.UNKNOWN),
        pool=props.get("Pool", ""), encrypted=props.get("Encryption", "") != Encryption.NONE,
        device=props.get("Device", ""),
        message=props.get("Message", ""), message_code=props.get("MessageCode", ""),
        pulled=bool(props.get("Pulled", False)),
        attempts_left=int(props.get("AttemptsLeft", 0)),
        probed=bool(props.get("DisksProbed", False)),
        candidates=parse_candidates(props), adoptable=parse_adoptable(props))


def parse_status(props: dict[str, Any]) -> Status:
    last_update = props.get("LastUpdate", {})
    return Status(
        boot_state=_enum(BootState, props.get("BootState", ""), BootState.UNKNOWN),
        booted_slot=props.get("BootedSlot", ""), primary_slot=props.get("PrimarySlot", ""),
        fallback_slot=props.get("FallbackSlot", ""),
        reasons=tuple(props.get("StateReasons", ())),
        reason_codes=tuple(props.get("StateReasonCodes", ())),
        problems=tuple(props.get("Problems", ())),
        problem_codes=tuple(props.get("ProblemCodes", ())),
        safe_to_remove=bool(props.get("SafeToRemove", False)),
        root_in_ram=props.get("RootInRam", "") == "yes",
        update_running=last_update.get("state", "") == JobState.RUNNING,
        last_update_job=last_update.get("job", ""),
        last_update_state=_enum(JobState, last_update["state"], JobState.FAILED)
        if last_update.get("state") else None,
        last_update_message=last_update.get("message", "") or last_update.get("error", ""))


def _outcome(props: dict[str, Any]) -> Outcome:
    name = str(props.get("ErrorName", ""))
    code = str(props.get("ErrorCode", "")) or name.removeprefix(ERROR_PREFIX)
    return Outcome(_enum(JobState, props.get("State", ""), JobState.FAILED), code,
                   str(props.get("Message", "")))


def _report(props: dict[str, Any], progress: Callable[[Progress], None]) -> None:
    progress(Progress(str(props.get("Phase", "")), int(props.get("BytesDone", 0)),
                      int(props.get("BytesTotal", 0))))


class Daemon:
    """A connection to anklumed. Mutating calls let polkit ask the person
    through the session's agent (ALLOW_INTERACTIVE_AUTHORIZATION)."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def connect(cls, address: str | None = None) -> Daemon:
        try:
            bus = MessageBus(bus_address=address) if address else \
                MessageBus(bus_type=BusType.SYSTEM)
            return cls(await asyncio.wait_for(bus.connect(), 10))
        except (OSError, TimeoutError, InvalidAddressError, AuthError) as e:
            raise DaemonError("Unreachable", f"cannot reach the system bus: {e}") from None

    async def close(self) -> None:
        if self.bus.connected:
            self.bus.disconnect()
        with contextlib.suppress(Exception):
            await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def _call(self, path: str, iface: str, member: str, signature: str = "",
                    body: list[Any] | None = None, mutating: bool = False) -> list[Any]:
        msg = Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                      signature=signature, body=body or [],
                      flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if mutating
                      else MessageFlag.NONE)
        try:
            reply = await asyncio.wait_for(
                self.bus.call(msg), INTERACTIVE_TIMEOUT if mutating else CALL_TIMEOUT)
        except TimeoutError:
            raise DaemonError("Timeout", "anklumed did not answer in time") from None
        except (OSError, EOFError):
            raise DaemonError("Unreachable", "the connection to the bus was lost") from None
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            name = reply.error_name or ""
            code = name.removeprefix(ERROR_PREFIX) if name.startswith(ERROR_PREFIX) \
                else "Unreachable" if name.endswith((".ServiceUnknown", ".NameHasNoOwner")) \
                else name
            raise DaemonError(code, str(reply.body[0]) if reply.body else name)
        return [unwrap(v) for v in reply.body]

    async def _props(self, path: str, iface: str) -> dict[str, Any]:
        got = await self._call(path, PROPERTIES_IFACE, "GetAll", "s", [iface])
        props: dict[str, Any] = got[0]
        return props

    async def status(self) -> Status:
        return parse_status(await self._props(ROOT_PATH, MANAGER_IFACE))

    async def data_disk(self) -> DataDisk:
        return parse_data_disk(await self._props(DATA_PATH, DATA_IFACE))

    async def update(self, source: str) -> str:
        got = await self._call(ROOT_PATH, MANAGER_IFACE, "Update", "ssb", [source, "", False],
                               mutating=True)
        return str(got[0])

    async def mark_good(self) -> None:
        await self._call(ROOT_PATH, MANAGER_IFACE, "MarkGood", mutating=True)

    async def rollback(self, force: bool = False) -> str:
        got = await self._call(ROOT_PATH, MANAGER_IFACE, "Rollback", "b", [force],
                               mutating=True)
        return str(got[0])

    async def setup(self, disk: str, pool: str, backend: Backend, encryption: Encryption,
                    passphrase: bytes) -> str:
        """Start erasing ``disk`` into the data disk; returns the job's path."""
        got = await self._call(DATA_PATH, DATA_IFACE, "Setup", "ssssay",
                               [disk, pool, backend.value, encryption.value, passphrase],
                               mutating=True)
        return str(got[0])

    async def adopt(self, disk: str, passphrase: bytes) -> str:
        got = await self._call(DATA_PATH, DATA_IFACE, "Adopt", "say", [disk, passphrase],
                               mutating=True)
        return str(got[0])

    async def unlock(self, passphrase: bytes) -> str:
        got = await self._call(DATA_PATH, DATA_IFACE, "Unlock", "ay", [passphrase],
                               mutating=True)
        return str(got[0])

    async def lock(self, stop_incus: bool = False) -> str:
        got = await self._call(DATA_PATH, DATA_IFACE, "Lock", "b", [stop_incus],
                               mutating=True)
        return str(got[0])

    async def cancel(self, job: str) -> bool:
        got = await self._call(job, JOB_IFACE, "Cancel", mutating=True)
        return bool(got[0])

    async def reboot(self) -> None:
        """Through logind, which asks polkit as for any desktop's reboot."""
        msg = Message(destination="org.freedesktop.login1", path="/org/freedesktop/login1",
                      interface="org.freedesktop.login1.Manager", member="Reboot",
                      signature="b", body=[True],
                      flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        reply = await asyncio.wait_for(self.bus.call(msg), INTERACTIVE_TIMEOUT)
        if reply is not None and reply.message_type == MessageType.ERROR:
            raise DaemonError((reply.error_name or "").rsplit(".", 1)[-1],
                              str(reply.body[0]) if reply.body else "the reboot was refused")

    async def _match(self, rule: str) -> None:
        await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))

    async def follow(self, job: str, progress: Callable[[Progress], None]) -> Outcome:
        """Wait for a job's end, reporting its progress; by signal, not by polling."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        known: dict[str, Any] = {}

        def handler(msg: Message) -> None:
            if msg.path != job or msg.message_type != MessageType.SIGNAL:
                return
            if msg.member == "Finished" and not ended.done():
                ended.set_result(None)
            elif msg.member == "PropertiesChanged":
                known.update(unwrap(msg.body[1]))
                _report(known, progress)

        self.bus.add_message_handler(handler)
        try:
            await self._match(f"type='signal',sender='{BUS_NAME}',path='{job}'")
            # Read after the match is in place, so an end in between is not missed.
            known.update({**await self._props(job, JOB_IFACE), **known})
            if known.get("State") == JobState.RUNNING:
                _report(known, progress)
                await ended
            return _outcome(await self._props(job, JOB_IFACE))
        finally:
            self.bus.remove_message_handler(handler)

    async def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` on every change of the manager's or the data disk's
        properties, and when anklumed starts or stops owning its name."""
        def handler(msg: Message) -> None:
            if msg.message_type != MessageType.SIGNAL:
                return
            if (msg.member == "PropertiesChanged" and msg.path in (ROOT_PATH, DATA_PATH)) \
                    or (msg.member == "NameOwnerChanged" and msg.body[:1] == [BUS_NAME]):
                changed()

        self.bus.add_message_handler(handler)
        await self._match(f"type='signal',sender='{BUS_NAME}',"
                          f"interface='{PROPERTIES_IFACE}',member='PropertiesChanged'")
        await self._match("type='signal',sender='org.freedesktop.DBus',"
                          f"member='NameOwnerChanged',arg0='{BUS_NAME}'")
