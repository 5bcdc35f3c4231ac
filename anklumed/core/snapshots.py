"""What the core knows, as typed, frozen snapshots.

A snapshot is built from memory alone: no program is run and no file is
read to make one (tests/unit/test_core.py proves it), so the service layer
can map one to D-Bus properties on every change, on the event loop, at no
cost. Whatever needs the disks or the stick is found out in worker threads
beforehand and kept by the core. Each value is a StrEnum, a frozen model
read from PERSIST, or a plain value; the service layer turns them into
what D-Bus carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from anklumed.data.disks import Disk, Refusal
from anklumed.data.manager import Adoptable, DataState
from anklumed.data.poolconf import Backend, PoolConf
from anklumed.handoff import VerityState
from anklumed.host import MemoryEncryption
from anklumed.jobs import Job, JobKind, JobPhase, JobState
from anklumed.problems import ProblemCode
from anklumed.slots.assessment import Assessment
from anklumed.slots.model import Rollback, SlotMeta
from anklumed.stick import SlotName


class Tristate(StrEnum):
    """A fact the system may not know: toram, the root in RAM."""

    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"

    @classmethod
    def of(cls, value: bool | None) -> Tristate:
        return cls.UNKNOWN if value is None else (cls.YES if value else cls.NO)


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    number: int
    kind: JobKind
    state: JobState
    phase: JobPhase
    done: int  # bytes (or steps) of the phase
    total: int
    rate: int  # bytes per second in the phase
    eta: int  # seconds left in the phase, -1 when unknown
    cancellable: bool
    result: str
    error_name: str  # an anklumed.errors name (Busy, Failed...), empty unless it failed
    error_code: str  # its ErrorCode (docs/dbus.md "Codes"), empty unless it failed
    message: str

    @classmethod
    def of(cls, job: Job) -> JobSnapshot:
        return cls(number=job.number, kind=JobKind(job.kind), state=job.state,
                   phase=job.phase, done=job.done, total=job.total, rate=job.rate,
                   eta=job.eta, cancellable=job.cancellable, result=job.result,
                   error_name=job.error_name, error_code=job.error_code, message=job.message)


@dataclass(frozen=True, slots=True)
class PartitionSnapshot:
    label: str
    number: int
    size: int  # bytes
    device: str  # empty when the kernel has no block device for it


@dataclass(frozen=True, slots=True)
class ManagerSnapshot:
    """The boot: slots, count, health, media, the last jobs."""

    version: str
    boot: Assessment  # booted, primary and fallback slot, boot state and its reasons
    boot_count: int
    boot_attempts: int
    problems: tuple[tuple[ProblemCode, str], ...]  # capped where it is published
    last_rollback: Rollback | None
    handoff_source: str
    toram: Tristate
    verity: VerityState
    root_in_ram: Tristate
    boot_disk: str
    media_present: bool
    safe_to_remove: bool
    partitions: tuple[PartitionSnapshot, ...]
    memory_encryption: MemoryEncryption
    ram_crypt_requested: bool
    boot_deadline: int  # seconds left to complete the boot, 0 when none is pending
    jobs: tuple[JobSnapshot, ...]  # the last job of each kind
    last_update: JobSnapshot | None


@dataclass(frozen=True, slots=True)
class SlotSnapshot:
    name: SlotName
    meta: SlotMeta | None  # None: PERSIST could not be read
    booted: bool
    primary: bool
    device: str
    partition_size: int


@dataclass(frozen=True, slots=True)
class CandidateDisk:
    """A disk that could hold the data (or why it may not)."""

    name: str
    device: Path
    model: str
    size: int
    bus: str
    serial: str
    contents: tuple[str, ...]
    refused: str  # empty if it may be used
    refused_code: Refusal | None  # the same as a word
    by_id: str  # a stable /dev/disk/by-id/ name, when udev made one

    @classmethod
    def of(cls, disk: Disk) -> CandidateDisk:
        return cls(name=disk.name, device=disk.device, model=disk.model, size=disk.size,
                   bus=disk.bus, serial=disk.serial, contents=tuple(disk.contents),
                   refused=disk.refused, refused_code=disk.refused_code, by_id=disk.by_id)


@dataclass(frozen=True, slots=True)
class DataDiskSnapshot:
    state: DataState
    conf: PoolConf | None  # pool.conf, when PERSIST has a usable one
    device: str
    mounts: Mapping[str, str]
    message: str
    message_code: str  # a MessageCode or an ErrorCode, empty with no message
    pulled: bool
    attempts_left: int
    candidates: tuple[CandidateDisk, ...]
    last_job: JobSnapshot | None
    adoptable: tuple[Adoptable, ...]  # offered only while no data disk is set up
    disks_probed: bool  # candidates, adoptable disks and filesystems are known
    filesystems: tuple[Backend, ...]  # what the data disk can be made with, preferred first
