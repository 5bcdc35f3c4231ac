"""The desktop clients' one way to anklumed: typed snapshots and calls.

Built on the client library (``anklume_client``): its proxies make the
calls, its ``properties`` fill in what a daemon of another revision lacks
(codes from nothing, records from the older tuples), its ``models`` type the
result and its ``words`` give the plain sentence for each code. What is
left here is the desktop's view: a summary of the manager and the data disk
with an UNKNOWN state for a daemon that does not answer, errors as one code
(``not-authorized``, ``unreachable``… the daemon's ErrorCode vocabulary),
and a watch that outlives a restart of anklumed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from dbus_fast import Message, MessageType

from anklume_client import ClientError, Connection, Job, Manager
from anklume_client import DataDisk as DataDiskProxy
from anklume_client import words as client_words
from anklume_client.errors import DISCONNECTED, TIMEOUT, code_of
from anklume_client.interface import (
    BUS_NAME,
    DATA_DISK,
    DATA_PATH,
    MANAGER,
    PROPERTIES_IFACE,
    ROOT_PATH,
)
from anklume_client.models import (
    AdoptableDisk,
    CandidateDisk,
    DataDiskStatus,
    JobState,
    JobStatus,
    ManagerStatus,
)
from anklume_client.properties import complete

__all__ = ["AdoptableDisk", "Backend", "BootState", "Daemon", "DaemonError", "DataDisk",
           "DataState", "Disk", "Encryption", "JobState", "Outcome", "Progress", "Status",
           "parse_data_disk", "parse_status"]

Disk = CandidateDisk  # a disk the data may go on, with the daemon's refused_code


class BootState(StrEnum):
    """The library's BootState, and UNKNOWN: a state this client does not know."""

    GOOD = "good"
    PENDING = "pending"
    ROLLED_BACK = "rolled-back"
    DEGRADED = "degraded"
    UNKNOWN = "unknown"


class DataState(StrEnum):
    """The library's DataState, and UNKNOWN: anklumed not answering, or a
    state this client does not know."""

    ABSENT = "absent"
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    MOUNTED = "mounted"
    ERROR = "error"
    UNKNOWN = "unknown"


class Backend(StrEnum):
    BTRFS = "btrfs"
    ZFS = "zfs"


class Encryption(StrEnum):
    LUKS2 = "luks2"
    NONE = "none"


UNREACHABLE = "unreachable"


class DaemonError(Exception):
    """A refusal or failure: ``code`` the daemon's error code
    (``not-authorized``, ``incorrect-passphrase``…, or ``unreachable``,
    ``timeout``, ``disconnected``), ``message`` one sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, e: ClientError) -> DaemonError:
        if e.name in (TIMEOUT, DISCONNECTED):
            return cls(e.name.lower(), e.message)
        if e.name in client_words.UNREACHABLE_NAMES:
            return cls(UNREACHABLE, e.message or "anklumed is not reachable")
        return cls(code_of(e.short_name), e.message)


@dataclass(frozen=True)
class DataDisk:
    state: DataState
    pool: str
    encrypted: bool
    device: str
    message: str  # plain words for its code, else the daemon's sentence
    pulled: bool
    attempts_left: int
    probed: bool
    candidates: tuple[Disk, ...]
    adoptable: tuple[AdoptableDisk, ...]
    # What a new data disk can be made with here, the preferred first; empty
    # until probed (a newer daemon's filesystem unknown here is left out).
    filesystems: tuple[Backend, ...]


@dataclass(frozen=True)
class Status:
    boot_state: BootState
    booted_slot: str
    primary_slot: str
    fallback_slot: str
    reasons: tuple[str, ...]  # plain words for each code, else the daemon's sentence
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
    error_code: str  # the job's ErrorCode (derived from ErrorName for an older daemon)
    message: str


E = TypeVar("E", bound=StrEnum)


def _enum(kind: type[E], value: object, default: E) -> E:
    try:
        return kind(str(value))
    except ValueError:
        return default


def status_of(m: ManagerStatus) -> Status:
    last = m.last_update
    return Status(
        boot_state=_enum(BootState, m.boot_state, BootState.UNKNOWN),
        booted_slot=m.booted_slot, primary_slot=m.primary_slot, fallback_slot=m.fallback_slot,
        reasons=tuple(client_words.sentence(n, client_words.REASONS) for n in m.reasons),
        safe_to_remove=m.safe_to_remove, root_in_ram=m.root_in_ram == "yes",
        update_running=last.get("state", "") == JobState.RUNNING,
        last_update_job=last.get("job", ""),
        last_update_state=_enum(JobState, last["state"], JobState.FAILED)
        if last.get("state") else None,
        last_update_message=last.get("message", "") or last.get("error", ""))


def data_disk_of(d: DataDiskStatus) -> DataDisk:
    return DataDisk(
        state=_enum(DataState, d.state, DataState.UNKNOWN), pool=d.pool,
        encrypted=d.encryption != Encryption.NONE, device=d.device,
        message=client_words.sentence(d.message, client_words.MESSAGES) if d.message else "",
        pulled=d.pulled, attempts_left=d.attempts_left, probed=d.disks_probed,
        candidates=d.candidates, adoptable=d.adoptable,
        filesystems=tuple(Backend(name) for name in d.filesystems if name in set(Backend)))


def parse_status(props: dict[str, Any]) -> Status:
    """A GetAll reply (of any revision, even partial) as the desktop's view."""
    return status_of(ManagerStatus.from_properties(complete(MANAGER, props)))


def parse_data_disk(props: dict[str, Any]) -> DataDisk:
    return data_disk_of(DataDiskStatus.from_properties(complete(DATA_DISK, props)))


def _outcome(job: JobStatus) -> Outcome:
    return Outcome(_enum(JobState, job.state, JobState.FAILED), job.error_code, job.message)


class Daemon:
    """A connection to anklumed. Mutating calls let polkit ask the person
    through the session's agent (an interactive Connection)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.bus = conn.bus
        self.manager = Manager(conn)
        self.data = DataDiskProxy(conn)

    @classmethod
    async def connect(cls, address: str | None = None) -> Daemon:
        try:
            return cls(await Connection.connect(address, interactive=True))
        except ClientError as e:
            raise DaemonError.of(e) from None

    async def close(self) -> None:
        await self.conn.close()

    async def status(self) -> Status:
        try:
            return status_of(await self.manager.status())
        except ClientError as e:
            raise DaemonError.of(e) from None

    async def data_disk(self) -> DataDisk:
        try:
            return data_disk_of(await self.data.status())
        except ClientError as e:
            raise DaemonError.of(e) from None

    async def follow_data(self, changed: Callable[[DataDisk], None],
                          gone: Callable[[], None]) -> Callable[[], None]:
        """Call ``changed`` with the data disk now, then at each change of its
        properties, and ``gone`` if this anklumed stops (a restarted one is
        another sender: follow it again); returns what stops both. The library
        subscribes before it reads, so no change falls between the first read
        and the signals."""
        try:
            stop_gone = await self.conn.watch_gone(gone)
            try:
                stop_data = await self.data.subscribe(
                    lambda props: changed(data_disk_of(DataDiskStatus.from_properties(props))))
            except BaseException:
                stop_gone()
                raise
        except ClientError as e:
            raise DaemonError.of(e) from None

        def stop() -> None:
            stop_data()
            stop_gone()
        return stop

    async def _job(self, started: Awaitable[Job]) -> str:
        try:
            job = await started
        except ClientError as e:
            raise DaemonError.of(e) from None
        return job.path

    async def update(self, source: str) -> str:
        return await self._job(self.manager.update(source, "", False))

    async def mark_good(self) -> None:
        try:
            await self.manager.mark_good()
        except ClientError as e:
            raise DaemonError.of(e) from None

    async def rollback(self, force: bool = False) -> str:
        try:
            return await self.manager.rollback(force)
        except ClientError as e:
            raise DaemonError.of(e) from None

    async def setup(self, disk: str, pool: str, backend: Backend, encryption: Encryption,
                    passphrase: bytes) -> str:
        """Start erasing ``disk`` into the data disk; returns the job's path."""
        return await self._job(self.data.setup(disk, pool, backend.value, encryption.value,
                                               passphrase))

    async def adopt(self, disk: str, passphrase: bytes) -> str:
        return await self._job(self.data.adopt(disk, passphrase))

    async def unlock(self, passphrase: bytes) -> str:
        return await self._job(self.data.unlock(passphrase))

    async def lock(self, stop_incus: bool = False) -> str:
        return await self._job(self.data.lock(stop_incus))

    async def cancel(self, job: str) -> bool:
        try:
            return await Job(self.conn, job).cancel()
        except ClientError as e:
            raise DaemonError.of(e) from None

    async def reboot(self) -> None:
        """Through logind, which asks polkit as for any desktop's reboot."""
        try:
            await self.conn.call("/org/freedesktop/login1", "org.freedesktop.login1.Manager",
                                 "Reboot", "b", [True], mutating=True,
                                 destination="org.freedesktop.login1")
        except ClientError as e:
            raise DaemonError(code_of(e.name.rsplit(".", 1)[-1]),
                              e.message or "the reboot was refused") from None

    async def follow(self, job: str, progress: Callable[[Progress], None]) -> Outcome:
        """Wait for a job's end, reporting its progress; by signal, not by polling."""
        def report(s: JobStatus) -> None:
            progress(Progress(s.phase, s.bytes_done, s.bytes_total))
        try:
            return _outcome(await Job(self.conn, job).follow(report))
        except ClientError as e:
            raise DaemonError.of(e) from None

    async def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` on every change of the manager's or the data disk's
        properties, and when anklumed starts or stops owning its name. Not
        Connection.subscribe: that one listens to the present owner only, and
        the tray must keep watching across a restart of anklumed."""
        def handler(msg: Message) -> None:
            if msg.message_type != MessageType.SIGNAL:
                return
            if (msg.member == "PropertiesChanged" and msg.path in (ROOT_PATH, DATA_PATH)) \
                    or (msg.member == "NameOwnerChanged" and msg.body[:1] == [BUS_NAME]):
                changed()

        self.bus.add_message_handler(handler)
        for rule in (f"type='signal',sender='{BUS_NAME}',interface='{PROPERTIES_IFACE}',"
                     "member='PropertiesChanged'",
                     "type='signal',sender='org.freedesktop.DBus',"
                     f"member='NameOwnerChanged',arg0='{BUS_NAME}'"):
            try:
                await self.conn.call("/org/freedesktop/DBus", "org.freedesktop.DBus",
                                     "AddMatch", "s", [rule],
                                     destination="org.freedesktop.DBus")
            except ClientError as e:
                raise DaemonError.of(e) from None
