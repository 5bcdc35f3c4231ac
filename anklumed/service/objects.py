"""The exported objects: /org/anklume/Live1 (Manager) and /org/anklume/Live1/slot/X."""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbus_fast import Variant
from dbus_fast.service import signal

from anklumed.core.snapshots import JobSnapshot, ManagerSnapshot, SlotSnapshot
from anklumed.errors import InvalidArgument, NotAuthorized
from anklumed.jobs import JobKind
from anklumed.problems import ProblemCode
from anklumed.service.boundary import (
    BUS_NAME,
    ROOT_PATH,
    DaemonInterface,
    StateInterface,
    capped,
    current_caller,
    dbus_method,
    published_body,
    record,
    ro_property,
)
from anklumed.service.passed_files import caller_reader, close_all, take_passed
from anklumed.service.polkit import (
    ACTION_DATA_LOCK,
    ACTION_DATA_SETUP,
    ACTION_DATA_UNLOCK,
    ACTION_SWITCH_SLOT,
    ACTION_UPDATE,
)
from anklumed.slots.local_files import LocalFiles, check_local_path
from anklumed.slots.model import SlotMeta
from anklumed.slots.source import check_source, is_url
from anklumed.slots.update import UpdateRequest
from anklumed.stick import SlotName
from anklumed.timestamps import format_time

if TYPE_CHECKING:
    from anklumed.service.app import Daemon

MANAGER_IFACE = f"{BUS_NAME}.Manager"
SLOT_IFACE = f"{BUS_NAME}.Slot"
JOB_IFACE = f"{BUS_NAME}.Job"
# What this daemon's interface adds to revision 1 (a daemon without the
# property is revision 1): reason, problem, error and message codes beside the
# sentences, named records beside positional tuples (2); the data disk's
# Filesystems (3) (docs/dbus.md).
INTERFACE_REVISION = 3
# The polkit action that guards cancelling a job of each kind.
JOB_ACTIONS = {JobKind.UPDATE: ACTION_UPDATE, JobKind.DATA_SETUP: ACTION_DATA_SETUP,
               JobKind.DATA_UNLOCK: ACTION_DATA_UNLOCK, JobKind.DATA_LOCK: ACTION_DATA_LOCK,
               JobKind.DATA_ADOPT: ACTION_DATA_SETUP}
# Problems published: enough to see what is wrong with every file on PERSIST;
# each one line a person reads (a quoted value is cut well before this). A
# junk file on PERSIST can name thousands (a 60 KB meta made 30,000, and
# status 2 MB).
MAX_PROBLEMS = 20
MAX_PROBLEM_TEXT = 300


def job_path(number: int) -> str:
    return f"{ROOT_PATH}/job/{number}"


def slot_path(slot: SlotName) -> str:
    return f"{ROOT_PATH}/slot/{slot.value}"


def parse_slot_arg(value: str) -> SlotName:
    slot = SlotName.parse(value)
    if slot is None:
        raise InvalidArgument(f"{value[:20]!r} is not a slot; a slot is A or B")
    return slot


# The methods that take files (see passed_files.py).
FILE_METHODS = {(ROOT_PATH, MANAGER_IFACE, "UpdateFromFiles", "ha{sv}")}
FILE_OPTIONS = {"image": "h", "signature": "h", "verify_hash": "s", "allow_downgrade": "b",
                "name": "s"}


def check_verify_hash(value: str) -> str | None:
    pin = value.strip()
    if len(pin) > 256 or any(c not in "0123456789abcdefABCDEF" for c in pin):
        raise InvalidArgument("the hash to verify is not a dm-verity root hash (hexadecimal "
                              "digits): copy it from the bundle's ROOT_HASH")
    return pin or None


def files_request(manifest: int, options: dict[str, Variant],
                  passed: list[int]) -> UpdateRequest:
    for key, value in options.items():
        if key not in FILE_OPTIONS:
            raise InvalidArgument(f"unknown option {key[:40]!r}: the options are "
                                  + ", ".join(FILE_OPTIONS))
        if value.signature != FILE_OPTIONS[key]:
            raise InvalidArgument(f"option {key} takes a D-Bus {FILE_OPTIONS[key]!r}, "
                                  f"not {value.signature[:20]!r}")
    values = {key: value.value for key, value in options.items()}
    name = values.get("name", "") or "the local bundle"
    check_source(name)  # shown and recorded: no control character, not endless
    files = LocalFiles(manifest, values.get("signature"), values.get("image"), name=name,
                       owned=passed)
    return UpdateRequest(source=name, verify_hash=check_verify_hash(values.get("verify_hash", "")),
                         allow_downgrade=bool(values.get("allow_downgrade", False)),
                         files=files)


def manager_properties(s: ManagerSnapshot) -> dict[str, Any]:
    """The Manager's properties, from the core's snapshot."""
    a = s.boot
    rollback = s.last_rollback
    problems = capped([text for _, text in s.problems], MAX_PROBLEMS, MAX_PROBLEM_TEXT,
                      "problems")
    # One code a sentence; the last sentence of a cut list says how many more.
    problem_codes = [code.value for code, _ in s.problems[:MAX_PROBLEMS]]
    problem_codes += [ProblemCode.MORE_PROBLEMS.value] * (len(problems) - len(problem_codes))
    return {
        "InterfaceRevision": INTERFACE_REVISION,
        "Version": s.version,
        "BootedSlot": a.booted.value if a.booted else "",
        "PrimarySlot": a.primary.value if a.primary else "",
        "FallbackSlot": a.fallback.value if a.fallback else "",
        "BootCount": s.boot_count,
        "BootAttempts": s.boot_attempts,
        "BootState": a.state.value,
        "MarkedGood": a.marked_good,
        "StateReasons": list(a.reasons),
        "StateReasonCodes": [code.value for code in a.reason_codes],
        "Problems": problems,
        "ProblemCodes": problem_codes,
        "LastRollback": {k.lower(): v for k, v in rollback.to_kv().items()} if rollback else {},
        "HandoffSource": s.handoff_source,
        "Toram": s.toram.value,
        "Verity": s.verity.value,
        "RootInRam": s.root_in_ram.value,
        "BootDisk": s.boot_disk,
        "BootMediaPresent": s.media_present,
        "SafeToRemove": s.safe_to_remove,
        "Partitions": [[p.label, p.number, p.size, p.device] for p in s.partitions],
        "PartitionRecords": [record(label=("s", p.label), number=("u", p.number),
                                    size=("t", p.size), device=("s", p.device))
                             for p in s.partitions],
        "MemoryEncryption": s.memory_encryption.value,
        "RamCryptRequested": s.ram_crypt_requested,
        "BootDeadline": s.boot_deadline,
        "Jobs": [job_path(j.number) for j in s.jobs],
        "LastUpdate": job_summary(s.last_update),
    }


class ManagerInterface(DaemonInterface):
    IFACE = MANAGER_IFACE
    daemon: "Daemon"

    def snapshot(self) -> dict[str, Any]:
        return manager_properties(self.daemon.core.manager())

    InterfaceRevision = ro_property("InterfaceRevision", "u")
    Version = ro_property("Version", "s")
    BootedSlot = ro_property("BootedSlot", "s")
    PrimarySlot = ro_property("PrimarySlot", "s")
    FallbackSlot = ro_property("FallbackSlot", "s")
    BootCount = ro_property("BootCount", "u")
    BootAttempts = ro_property("BootAttempts", "u")
    BootState = ro_property("BootState", "s")
    MarkedGood = ro_property("MarkedGood", "b")
    StateReasons = ro_property("StateReasons", "as")
    StateReasonCodes = ro_property("StateReasonCodes", "as")  # parallel to StateReasons
    Problems = ro_property("Problems", "as")
    ProblemCodes = ro_property("ProblemCodes", "as")  # parallel to Problems
    LastRollback = ro_property("LastRollback", "a{ss}")
    HandoffSource = ro_property("HandoffSource", "s")
    Toram = ro_property("Toram", "s")
    Verity = ro_property("Verity", "s")
    RootInRam = ro_property("RootInRam", "s")
    BootDisk = ro_property("BootDisk", "s")
    BootMediaPresent = ro_property("BootMediaPresent", "b")
    SafeToRemove = ro_property("SafeToRemove", "b")
    Partitions = ro_property("Partitions", "a(suts)")
    PartitionRecords = ro_property("PartitionRecords", "aa{sv}")  # Partitions, named
    MemoryEncryption = ro_property("MemoryEncryption", "s")
    RamCryptRequested = ro_property("RamCryptRequested", "b")
    BootDeadline = ro_property("BootDeadline", "i")
    Jobs = ro_property("Jobs", "ao")
    LastUpdate = ro_property("LastUpdate", "a{ss}")

    @dbus_method(args=(("source", "s"), ("verify_hash", "s"), ("allow_downgrade", "b")),
                 returns="o")
    async def Update(self, source: str, verify_hash: str, allow_downgrade: bool) -> str:
        """Start writing the bundle at ``source`` (an http(s) URL, or a path
        read with the caller's own rights) into the other slot; returns the job."""
        if not is_url(check_source(source)):
            check_local_path(Path(source))
        pin = check_verify_hash(verify_hash)
        caller = current_caller()
        await self.daemon.authorize(ACTION_UPDATE, caller)
        reader = None
        if not is_url(source):
            assert self.daemon.bus is not None
            reader = await caller_reader(self.daemon.bus, caller.sender)
        request = UpdateRequest(source=source, verify_hash=pin,
                                allow_downgrade=allow_downgrade, reader=reader)
        return job_path(self.daemon.core.start_update(request).number)

    @dbus_method(args=(("manifest", "h"), ("options", "a{sv}")), returns="o")
    async def UpdateFromFiles(self, manifest: int, options: dict[str, Variant]) -> str:
        """Start writing a local bundle passed as open files (read-only
        descriptors, as UDisks' LoopSetup takes them): anklumed reads only
        what the caller could open. Options: image (h), signature (h),
        verify_hash (s), allow_downgrade (b), name (s: what messages and the
        slot's Source show)."""
        passed = take_passed()  # ours to close from here, or the job's
        try:
            request = files_request(manifest, options, passed)
            await self.daemon.authorize(ACTION_UPDATE, current_caller())
            return job_path(self.daemon.core.start_update(request).number)
        except BaseException:
            close_all(passed)
            raise

    @dbus_method()
    async def MarkGood(self) -> None:
        await self.daemon.authorize(ACTION_SWITCH_SLOT, current_caller())
        await self.daemon.core.mark_good()

    @dbus_method(args=(("force", "b"),), returns="s")
    async def Rollback(self, force: bool) -> str:
        await self.daemon.authorize(ACTION_SWITCH_SLOT, current_caller())
        return (await self.daemon.core.rollback(force)).value

    @dbus_method(args=(("slot", "s"), ("force", "b")))
    async def SetPrimary(self, slot: str, force: bool) -> None:
        target = parse_slot_arg(slot)
        await self.daemon.authorize(ACTION_SWITCH_SLOT, current_caller())
        await self.daemon.core.set_primary(target, force)

    @dbus_method(args=(("slot", "s"),))
    async def MarkBad(self, slot: str) -> None:
        target = parse_slot_arg(slot)
        await self.daemon.authorize(ACTION_SWITCH_SLOT, current_caller())
        await self.daemon.core.mark_bad(target)


def _time(value: Any) -> str:
    return format_time(value) if value is not None else ""


def slot_properties(s: SlotSnapshot) -> dict[str, Any]:
    """A Slot's properties, from the core's snapshot."""
    meta = s.meta or SlotMeta()
    return {
        "Name": s.name.value,
        "Status": meta.status.value if s.meta else "unknown",
        "Version": meta.version or "",
        "Size": meta.size or 0,
        "Sha256": meta.sha256 or "",
        "RootHash": meta.root_hash or "",
        "Salt": meta.salt or "",
        "DataBlockSize": meta.data_block_size or 0,
        "HashBlockSize": meta.hash_block_size or 0,
        "HashAlg": meta.hash_alg or "",
        "InstalledAt": _time(meta.installed_at),
        "ActivatedAt": _time(meta.activated_at),
        "LastGoodAt": _time(meta.last_good_at),
        "Source": meta.source or "",
        "Booted": s.booted,
        "Primary": s.primary,
        "Device": s.device,
        "PartitionSize": s.partition_size,
    }


class SlotInterface(StateInterface):
    def __init__(self, daemon: "Daemon", slot: SlotName) -> None:
        self.daemon = daemon
        self.slot = slot
        super().__init__(SLOT_IFACE)

    def snapshot(self) -> dict[str, Any]:
        return slot_properties(self.daemon.core.slot(self.slot))

    Name = ro_property("Name", "s")
    Status = ro_property("Status", "s")
    Version = ro_property("Version", "s")
    Size = ro_property("Size", "t")
    Sha256 = ro_property("Sha256", "s")
    RootHash = ro_property("RootHash", "s")
    Salt = ro_property("Salt", "s")
    DataBlockSize = ro_property("DataBlockSize", "u")
    HashBlockSize = ro_property("HashBlockSize", "u")
    HashAlg = ro_property("HashAlg", "s")
    InstalledAt = ro_property("InstalledAt", "s")
    ActivatedAt = ro_property("ActivatedAt", "s")
    LastGoodAt = ro_property("LastGoodAt", "s")
    Source = ro_property("Source", "s")
    Booted = ro_property("Booted", "b")
    Primary = ro_property("Primary", "b")
    Device = ro_property("Device", "s")
    PartitionSize = ro_property("PartitionSize", "t")


def job_summary(job: JobSnapshot | None) -> dict[str, str]:
    if job is None:
        return {}
    return {"job": job_path(job.number), "state": job.state.value, "result": job.result,
            "error": job.error_name, "error_code": job.error_code, "message": job.message}


def job_properties(j: JobSnapshot) -> dict[str, Any]:
    """A Job's properties, from the core's snapshot."""
    return {"Kind": j.kind.value, "State": j.state.value, "Phase": j.phase.value,
            "BytesDone": j.done, "BytesTotal": j.total, "Rate": j.rate, "Eta": j.eta,
            "Cancellable": j.cancellable, "Result": j.result, "ErrorName": j.error_name,
            "ErrorCode": j.error_code, "Message": j.message}


class JobInterface(StateInterface):
    """/org/anklume/Live1/job/N: a long operation's progress, Cancel and Finished."""

    def __init__(self, daemon: "Daemon", job: JobSnapshot) -> None:
        self.daemon = daemon
        self.job = job  # the last snapshot the core gave of it
        super().__init__(JOB_IFACE)

    def show(self, job: JobSnapshot) -> None:
        self.job = job
        self.publish()

    def snapshot(self) -> dict[str, Any]:
        return job_properties(self.job)

    Kind = ro_property("Kind", "s")
    State = ro_property("State", "s")
    Phase = ro_property("Phase", "s")
    BytesDone = ro_property("BytesDone", "t")
    BytesTotal = ro_property("BytesTotal", "t")
    Rate = ro_property("Rate", "t")
    Eta = ro_property("Eta", "i")
    Cancellable = ro_property("Cancellable", "b")
    Result = ro_property("Result", "s")
    ErrorName = ro_property("ErrorName", "s")
    ErrorCode = ro_property("ErrorCode", "s")
    Message = ro_property("Message", "s")

    @dbus_method(returns="b")
    async def Cancel(self) -> bool:
        """Ask the job to stop; false when it is past the point of no return."""
        caller = current_caller()
        action = JOB_ACTIONS.get(self.job.kind)
        if action is None:
            raise NotAuthorized("this job cannot be cancelled")
        await self.daemon.authorize(action, caller)
        return self.daemon.core.cancel_job(self.job.number)

    @signal()
    def Finished(self) -> "sss":  # type: ignore[name-defined]  # noqa: F821 (a D-Bus signature)
        j = self.job
        error = f"{BUS_NAME}.Error.{j.error_name}" if j.error_name else ""
        return published_body("sss", [j.state.value, error, j.message])
