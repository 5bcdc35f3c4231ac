"""/org/anklume/Live1/data: the data disk (org.anklume.Live1.DataDisk).

Secrets arrive as ``ay`` (DESIGN.md §5: never ``s``), are handed to the job
and reach cryptsetup only on stdin or a pipe; they are never logged or put
in an error message. (Python cannot reliably wipe them from memory.)
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dbus_fast import Variant

from anklumed.core.snapshots import CandidateDisk, DataDiskSnapshot
from anklumed.data.poolconf import Backend, Encryption
from anklumed.errors import InvalidArgument
from anklumed.service.boundary import (
    BUS_NAME,
    ROOT_PATH,
    DaemonInterface,
    current_caller,
    dbus_method,
    record,
    ro_property,
)
from anklumed.service.objects import job_path, job_summary
from anklumed.service.polkit import ACTION_DATA_LOCK, ACTION_DATA_SETUP, ACTION_DATA_UNLOCK

if TYPE_CHECKING:
    from anklumed.service.app import Daemon

DATA_IFACE = f"{BUS_NAME}.DataDisk"
DATA_PATH = f"{ROOT_PATH}/data"
MAX_SECRET = 4096
# Refresh needs no authorization (it only reads, and a desktop widget showing
# the disks must not ask for a password), so anyone may call it in a loop:
# concurrent calls share one probe, and a call within this many seconds of
# the last probe's start is answered from it (a plug or pull is noticed on
# its own, at once, from the kernel's events).
REFRESH_INTERVAL = 5.0


class Coalesced:
    """``work`` run at most once per ``interval`` seconds; callers that arrive
    while it runs wait for that run instead of starting another."""

    def __init__(self, work: Callable[[], Awaitable[None]], interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.work, self.interval, self.clock = work, interval, clock
        self._running: asyncio.Future[None] | None = None
        self._started: float | None = None

    async def __call__(self) -> None:
        if self._running is None:
            if self._started is not None and self.clock() - self._started < self.interval:
                return
            self._started = self.clock()
            self._running = asyncio.ensure_future(self.work())
            self._running.add_done_callback(self._done)
        # shield: a caller that gives up does not cancel the others' probe
        await asyncio.shield(self._running)

    def _done(self, fut: "asyncio.Future[None]") -> None:
        self._running = None
        if not fut.cancelled():
            fut.exception()  # retrieved: each waiter gets it raised


def _secret(value: bytes) -> bytes:
    if len(value) > MAX_SECRET:
        raise InvalidArgument(f"a passphrase or key file is at most {MAX_SECRET} bytes")
    return bytes(value)


def _choice(enum: type[Backend] | type[Encryption], value: str, what: str) -> Any:
    try:
        return enum(value.strip().lower())
    except ValueError:
        options = ", ".join(e.value for e in enum)
        raise InvalidArgument(f"{value[:20]!r} is not a {what} ({options})") from None


def candidate_record(disk: CandidateDisk) -> dict[str, Variant]:
    """One disk of CandidateDisks: ``refused`` a sentence, ``refused_code`` a
    word of anklumed.data.disks.Refusal (both empty when it may be used)."""
    return record(name=("s", disk.name), device=("s", str(disk.device)),
                  model=("s", disk.model), size=("t", disk.size), bus=("s", disk.bus),
                  serial=("s", disk.serial), by_id=("s", disk.by_id),
                  contents=("as", list(disk.contents)), refused=("s", disk.refused),
                  refused_code=("s", disk.refused_code.value if disk.refused_code else ""))


def data_disk_properties(s: DataDiskSnapshot) -> dict[str, Any]:
    """The DataDisk's properties, from the core's snapshot."""
    conf = s.conf
    return {
        "State": s.state.value,
        "Pool": conf.pool_name if conf else "",
        "Backend": conf.pool_type.value if conf else "",
        "Encryption": conf.encryption.value if conf else "",
        "LuksUuid": (conf.luks_uuid or "") if conf else "",
        "Device": s.device,
        "Mounts": dict(s.mounts),
        "Message": s.message,
        "MessageCode": s.message_code,
        "Pulled": s.pulled,
        "AttemptsLeft": s.attempts_left,
        "Candidates": [[c.name, str(c.device), c.model, c.size, c.bus, c.serial,
                        "; ".join(c.contents), c.refused] for c in s.candidates],
        "LastJob": job_summary(s.last_job),
        "Adoptable": [[str(a.device), a.pool, a.luks_uuid] for a in s.adoptable],
        "CandidateDisks": [candidate_record(c) for c in s.candidates],
        "AdoptableDisks": [record(device=("s", str(a.device)), pool=("s", a.pool),
                                  luks_uuid=("s", a.luks_uuid)) for a in s.adoptable],
        "DisksProbed": s.disks_probed,
        "Filesystems": [backend.value for backend in s.filesystems],
    }


class DataDiskInterface(DaemonInterface):
    IFACE = DATA_IFACE
    daemon: "Daemon"

    def __init__(self, daemon: "Daemon") -> None:
        super().__init__(daemon)
        self._refresh = Coalesced(daemon.core.refresh_data, REFRESH_INTERVAL)

    def snapshot(self) -> dict[str, Any]:
        return data_disk_properties(self.daemon.core.data_disk())

    State = ro_property("State", "s")
    Pool = ro_property("Pool", "s")
    Backend = ro_property("Backend", "s")
    Encryption = ro_property("Encryption", "s")
    LuksUuid = ro_property("LuksUuid", "s")
    Device = ro_property("Device", "s")
    Mounts = ro_property("Mounts", "a{ss}")
    Message = ro_property("Message", "s")
    MessageCode = ro_property("MessageCode", "s")
    Pulled = ro_property("Pulled", "b")
    AttemptsLeft = ro_property("AttemptsLeft", "u")
    Candidates = ro_property("Candidates", "a(ssstssss)")
    LastJob = ro_property("LastJob", "a{ss}")
    Adoptable = ro_property("Adoptable", "a(sss)")
    CandidateDisks = ro_property("CandidateDisks", "aa{sv}")  # Candidates, named
    AdoptableDisks = ro_property("AdoptableDisks", "aa{sv}")  # Adoptable, named
    DisksProbed = ro_property("DisksProbed", "b")  # Candidates, Adoptable, Filesystems known
    Filesystems = ro_property("Filesystems", "as")  # what Setup can make, preferred first

    @dbus_method(args=(("disk", "s"), ("pool", "s"), ("backend", "s"), ("encryption", "s"),
                       ("passphrase", "ay")), returns="o")
    async def Setup(self, disk: str, pool: str, backend: str, encryption: str,
                    passphrase: bytes) -> str:
        """Erase ``disk`` and make it the data disk; returns the job."""
        await self.daemon.authorize(ACTION_DATA_SETUP, current_caller())
        job = self.daemon.core.start_data_setup(
            disk, pool, _choice(Backend, backend, "backend"),
            _choice(Encryption, encryption, "encryption"), _secret(passphrase))
        return job_path(job.number)

    @dbus_method(args=(("disk", "s"), ("passphrase", "ay")), returns="o")
    async def Adopt(self, disk: str, passphrase: bytes) -> str:
        """Take on a data disk set up from another stick (see Adoptable)."""
        await self.daemon.authorize(ACTION_DATA_SETUP, current_caller())
        return job_path(self.daemon.core.start_data_adopt(disk, _secret(passphrase)).number)

    @dbus_method(args=(("passphrase", "ay"),), returns="o")
    async def Unlock(self, passphrase: bytes) -> str:
        """Open and mount the data disk (an empty passphrase uses pool.conf's KEY_FILE)."""
        await self.daemon.authorize(ACTION_DATA_UNLOCK, current_caller())
        return job_path(self.daemon.core.start_data_unlock(_secret(passphrase)).number)

    @dbus_method(args=(("stop_incus", "b"),), returns="o")
    async def Lock(self, stop_incus: bool) -> str:
        """Unmount and close the data disk; Busy (naming who) when it is in use."""
        await self.daemon.authorize(ACTION_DATA_LOCK, current_caller())
        return job_path(self.daemon.core.start_data_lock(stop_incus).number)

    @dbus_method(args=(("current", "ay"), ("new", "ay")))
    async def ChangePassphrase(self, current: bytes, new: bytes) -> None:
        """Replace the passphrase (the keyslot ``current`` opens); others are kept."""
        await self.daemon.authorize(ACTION_DATA_SETUP, current_caller())
        if not new:
            raise InvalidArgument("the new passphrase is empty")
        await self.daemon.core.change_passphrase(_secret(current), _secret(new))

    @dbus_method(args=(("current", "ay"),), returns="ay")
    async def AddRecoveryKey(self, current: bytes) -> bytes:
        """Add a random recovery key in a second keyslot; returned once, kept nowhere."""
        await self.daemon.authorize(ACTION_DATA_SETUP, current_caller())
        return await self.daemon.core.add_recovery_key(_secret(current))

    @dbus_method()
    async def Refresh(self) -> None:
        """Look at the disks again (hot-plug is also noticed on its own); at
        most once per REFRESH_INTERVAL, whoever asks. The filesystems each
        time: a zfs module loaded a moment ago is offered at once."""
        await self.daemon.core.refresh_filesystems()
        await self._refresh()
