"""Typed, frozen views of the objects' properties (docs/dbus.md).

A state a newer daemon adds and this library does not know stays a plain
string: ``BootState | str``, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

E = TypeVar("E", bound=StrEnum)


class BootState(StrEnum):
    GOOD = "good"
    PENDING = "pending"
    ROLLED_BACK = "rolled-back"
    DEGRADED = "degraded"


class SlotStatus(StrEnum):
    OK = "ok"
    PENDING = "pending"
    FAILED = "failed"
    EMPTY = "empty"
    UNKNOWN = "unknown"


class DataState(StrEnum):
    ABSENT = "absent"
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    MOUNTED = "mounted"
    ERROR = "error"


class JobState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    UPDATE = "update"
    DATA_SETUP = "data-setup"
    DATA_UNLOCK = "data-unlock"
    DATA_LOCK = "data-lock"
    DATA_ADOPT = "data-adopt"


def known(enum: type[E], value: str) -> E | str:
    """``value`` as a member of ``enum``, or as it came when the enum lacks it."""
    try:
        return enum(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class Note:
    """A reason or a problem: its code (empty from a revision-1 daemon) and
    the daemon's sentence."""

    code: str
    text: str


def notes(codes: list[str], texts: list[str]) -> tuple[Note, ...]:
    padded = [*codes, *[""] * (len(texts) - len(codes))]
    return tuple(Note(code, text) for code, text in zip(padded, texts, strict=False))


@dataclass(frozen=True)
class Partition:
    label: str
    number: int
    size: int
    device: str


@dataclass(frozen=True)
class ManagerStatus:
    revision: int
    version: str
    booted_slot: str
    primary_slot: str
    fallback_slot: str
    boot_count: int
    boot_attempts: int
    boot_state: BootState | str
    marked_good: bool
    reasons: tuple[Note, ...]
    problems: tuple[Note, ...]
    last_rollback: dict[str, str]
    last_update: dict[str, str]
    handoff_source: str
    toram: str
    root_in_ram: str
    verity: str
    boot_disk: str
    boot_media_present: bool
    safe_to_remove: bool
    partitions: tuple[Partition, ...]
    memory_encryption: str
    ram_crypt_requested: bool
    boot_deadline: int
    jobs: tuple[str, ...]

    @classmethod
    def from_properties(cls, p: dict[str, Any]) -> ManagerStatus:
        return cls(
            revision=p["InterfaceRevision"], version=p["Version"],
            booted_slot=p["BootedSlot"], primary_slot=p["PrimarySlot"],
            fallback_slot=p["FallbackSlot"], boot_count=p["BootCount"],
            boot_attempts=p["BootAttempts"], boot_state=known(BootState, p["BootState"]),
            marked_good=p["MarkedGood"],
            reasons=notes(p["StateReasonCodes"], p["StateReasons"]),
            problems=notes(p["ProblemCodes"], p["Problems"]),
            last_rollback=dict(p["LastRollback"]), last_update=dict(p["LastUpdate"]),
            handoff_source=p["HandoffSource"], toram=p["Toram"], root_in_ram=p["RootInRam"],
            verity=p["Verity"], boot_disk=p["BootDisk"],
            boot_media_present=p["BootMediaPresent"], safe_to_remove=p["SafeToRemove"],
            partitions=tuple(Partition(r.get("label", ""), r.get("number", 0),
                                       r.get("size", 0), r.get("device", ""))
                             for r in p["PartitionRecords"]),
            memory_encryption=p["MemoryEncryption"],
            ram_crypt_requested=p["RamCryptRequested"], boot_deadline=p["BootDeadline"],
            jobs=tuple(p["Jobs"]),
        )


@dataclass(frozen=True)
class SlotInfo:
    name: str
    status: SlotStatus | str
    version: str
    booted: bool
    primary: bool
    installed_at: str
    activated_at: str
    last_good_at: str
    source: str
    root_hash: str
    size: int
    device: str
    partition_size: int

    @classmethod
    def from_properties(cls, p: dict[str, Any]) -> SlotInfo:
        return cls(name=p["Name"], status=known(SlotStatus, p["Status"]), version=p["Version"],
                   booted=p["Booted"], primary=p["Primary"], installed_at=p["InstalledAt"],
                   activated_at=p["ActivatedAt"], last_good_at=p["LastGoodAt"],
                   source=p["Source"], root_hash=p["RootHash"], size=p["Size"],
                   device=p["Device"], partition_size=p["PartitionSize"])


@dataclass(frozen=True)
class CandidateDisk:
    name: str
    device: str
    model: str
    size: int
    bus: str
    serial: str
    by_id: str
    contents: tuple[str, ...]
    refused: str  # the daemon's sentence, empty when the disk may hold the data
    refused_code: str

    @property
    def usable(self) -> bool:
        return not self.refused

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> CandidateDisk:
        return cls(name=r.get("name", ""), device=r.get("device", ""), model=r.get("model", ""),
                   size=r.get("size", 0), bus=r.get("bus", ""), serial=r.get("serial", ""),
                   by_id=r.get("by_id", ""), contents=tuple(r.get("contents", ())),
                   refused=r.get("refused", ""), refused_code=r.get("refused_code", ""))


@dataclass(frozen=True)
class AdoptableDisk:
    device: str
    pool: str
    luks_uuid: str

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> AdoptableDisk:
        return cls(r.get("device", ""), r.get("pool", ""), r.get("luks_uuid", ""))


@dataclass(frozen=True)
class DataDiskStatus:
    state: DataState | str
    pool: str
    backend: str
    encryption: str
    luks_uuid: str
    device: str
    mounts: dict[str, str]
    message: Note | None
    pulled: bool
    attempts_left: int
    candidates: tuple[CandidateDisk, ...]
    adoptable: tuple[AdoptableDisk, ...]
    disks_probed: bool
    last_job: dict[str, str]
    filesystems: tuple[str, ...]  # what Setup can make here, the preferred first

    @classmethod
    def from_properties(cls, p: dict[str, Any]) -> DataDiskStatus:
        return cls(
            state=known(DataState, p["State"]), pool=p["Pool"], backend=p["Backend"],
            encryption=p["Encryption"], luks_uuid=p["LuksUuid"], device=p["Device"],
            mounts=dict(p["Mounts"]),
            message=Note(p["MessageCode"], p["Message"]) if p["Message"] else None,
            pulled=p["Pulled"], attempts_left=p["AttemptsLeft"],
            candidates=tuple(CandidateDisk.from_record(r) for r in p["CandidateDisks"]),
            adoptable=tuple(AdoptableDisk.from_record(r) for r in p["AdoptableDisks"]),
            disks_probed=p["DisksProbed"], last_job=dict(p["LastJob"]),
            filesystems=tuple(p["Filesystems"]),
        )


@dataclass(frozen=True)
class JobStatus:
    path: str
    kind: JobKind | str
    state: JobState | str
    phase: str
    bytes_done: int
    bytes_total: int
    rate: int
    eta: int
    cancellable: bool
    result: str
    error_name: str  # short: IncorrectPassphrase
    error_code: str
    message: str

    @property
    def finished(self) -> bool:
        return self.state != JobState.RUNNING

    @classmethod
    def from_properties(cls, path: str, p: dict[str, Any]) -> JobStatus:
        return cls(path=path, kind=known(JobKind, p["Kind"]), state=known(JobState, p["State"]),
                   phase=p["Phase"], bytes_done=p["BytesDone"], bytes_total=p["BytesTotal"],
                   rate=p["Rate"], eta=p["Eta"], cancellable=p["Cancellable"],
                   result=p["Result"], error_name=p["ErrorName"], error_code=p["ErrorCode"],
                   message=p["Message"])
