"""The data disk's lifecycle: setup, unlock and mount, lock (DESIGN.md §6).

Each operation runs as a job in worker threads and reports its phases. The
order is chosen for power cuts and mistakes: setup writes pool.conf last, so
a half-made disk is never taken for a data disk (the next setup formats it
again); unlock tries the passphrase before anything is mounted; lock unmounts
nothing unless everything can be unmounted, and names what holds the disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from anklumed import events
from anklumed.command import CommandError, run
from anklumed.data import btrfs, disks, dm, filesystems, incus, luks, zfs
from anklumed.data.poolconf import (
    LABEL_PREFIX,
    Backend,
    Encryption,
    PoolConf,
    check_pool_name,
    read_pool_conf,
    write_pool_conf,
)
from anklumed.errors import (
    AnklumeError,
    Busy,
    ErrorCode,
    Failed,
    IncorrectPassphrase,
    InvalidArgument,
    NotFound,
)
from anklumed.host import parse_mountinfo
from anklumed.hostns import for_system
from anklumed.jobs import Job
from anklumed.persist import PersistDir, PersistStore

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
LOCKOUT_SECONDS = 30.0  # after MAX_ATTEMPTS wrong passphrases in a row
STATE_SUBVOLUME = "incus-state"  # bound to /var/lib/incus
INCUS_SUBVOLUME = "incus"  # the Incus storage pool's source


class DataState(StrEnum):
    ABSENT = "absent"  # no data disk is set up (no pool.conf)
    LOCKED = "locked"  # set up; closed (or not plugged in)
    UNLOCKED = "unlocked"  # LUKS open, nothing mounted
    MOUNTED = "mounted"
    ERROR = "error"


@dataclass(frozen=True)
class DataPaths:
    mountpoint: Path = Path("/mnt/anklume-data")
    incus_state: Path = Path("/var/lib/incus")
    incus_socket: Path = Path("/var/lib/incus/unix.socket")
    luks_unlock_ms: int = 2000
    luks_memory_kib: int | None = None  # None: a quarter of the RAM (luks.argon2_memory_kib)
    luks_iterations: int | None = None  # None: as many as luks_unlock_ms allows


@dataclass(frozen=True)
class SetupRequest:
    disk: str
    pool_name: str
    backend: Backend
    encryption: Encryption
    secret: bytes = field(default=b"", repr=False)


@dataclass
class Snapshot:
    """What the DataDisk object publishes."""

    state: DataState = DataState.ABSENT
    conf: PoolConf | None = None
    device: str = ""
    message: str = ""
    message_code: str = ""  # a MessageCode, or an ErrorCode (pool.conf unusable); "" with none
    mounts: dict[str, str] = field(default_factory=dict)
    pulled: bool = False  # the disk was pulled out while open (state error)
    held: bool = False  # ... and its I/O is held, waiting for it to come back


class MessageCode(StrEnum):
    """The data disk's ``MessageCode`` on the bus beside its sentence (docs/dbus.md
    "Codes"); when pool.conf cannot be used it is that error's ErrorCode."""

    PULLED = "pulled"
    PULLED_HELD = "pulled-held"


PULLED_HELD = ("the data disk was pulled out while in use; its writes are held. Plug it "
               "back in and unlock it to carry on where it stopped, or lock it to give up "
               "what was not written yet")
PULLED = ("the data disk was pulled out while in use. Plug it back in and unlock it, or "
          "lock it to let it go")


@dataclass(frozen=True)
class Adoptable:
    """A data disk set up from another stick: found by its LUKS label."""

    device: Path
    pool: str
    luks_uuid: str


def adoptable(candidates: list[disks.Disk]) -> list[Adoptable]:
    found = []
    for disk in candidates:
        if disk.usable and disk.fstype == "crypto_LUKS" and disk.label.startswith(LABEL_PREFIX):
            pool = disk.label[len(LABEL_PREFIX):]
            uuid = _blkid(disk.device, "UUID")
            with contextlib.suppress(InvalidArgument):
                found.append(Adoptable(disk.device, check_pool_name(pool), uuid))
    return found


def _mounted_at(path: Path) -> bool:
    return os.path.ismount(path)


def holders(path: Path) -> list[str]:
    """Processes using files under ``path``: "pid (command)", for a person to act on."""
    found = []
    prefix = str(path).rstrip("/") + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        links = [proc / "cwd", proc / "root", proc / "exe"]
        with contextlib.suppress(OSError):
            links += list((proc / "fd").iterdir())
        for link in links:
            try:
                target = str(link.readlink())
            except OSError:
                continue
            if target == str(path) or target.startswith(prefix):
                try:
                    command = (proc / "comm").read_text().strip()
                except OSError:
                    command = "?"
                found.append(f"{proc.name} ({command})")
                break
    return found


class DataDisk:
    def __init__(self, store: PersistStore, paths: DataPaths,
                 boot_disks: Callable[[], set[str]], allow_loop: bool = False,
                 loops_under: Path | None = None) -> None:
        self.store = store
        self.paths = paths
        self.boot_disks = boot_disks
        self.allow_loop = allow_loop
        self.loops_under = loops_under  # the candidates' loop devices: images under it
        self.snapshot = Snapshot()
        self.failures = 0
        self.locked_out_until = 0.0
        self._lock = threading.Lock()  # one lifecycle step at a time, across threads

    @property
    def attempts_left(self) -> int:
        return 0 if self.locked_out_until > time.monotonic() else MAX_ATTEMPTS - self.failures

    # ---- reading the state (worker thread) ----
    def read(self, reload: bool = True) -> Snapshot:
        """The state now. pool.conf is read from PERSIST only when ``reload``
        (start, after a job): a hot-plug event must not mount the stick."""
        if reload or self.snapshot.state is DataState.ERROR:
            try:
                with self.store.transaction() as pdir:
                    conf = read_pool_conf(pdir)
            except AnklumeError as e:
                return Snapshot(DataState.ERROR, message=str(e), message_code=e.code)
        else:
            conf = self.snapshot.conf
        return self.read_with(conf)

    @staticmethod
    def conf_in(pdir: PersistDir) -> PoolConf | AnklumeError | None:
        """pool.conf from a PERSIST transaction another component holds open
        (the start's: PERSIST mounted once, not twice); the error that makes
        it unusable, to be shown by read_with."""
        try:
            return read_pool_conf(pdir)
        except AnklumeError as e:
            return e

    def read_with(self, conf: PoolConf | AnklumeError | None) -> Snapshot:
        """The state now, for pool.conf as just read (``read``, ``conf_in``)."""
        if isinstance(conf, AnklumeError):
            return Snapshot(DataState.ERROR, message=str(conf), message_code=conf.code)
        if conf is None:
            return Snapshot(DataState.ABSENT)
        snap = Snapshot(DataState.LOCKED, conf)
        name = conf.mapper_name
        if conf.encryption is Encryption.LUKS2 and dm.exists(name):
            snap.state, snap.device = DataState.UNLOCKED, str(luks.MAPPER / name)
            if dm.backing_gone(name) or dm.given_up(name):
                snap.pulled, snap.held = True, dm.is_held(name)
                snap.state, snap.message = DataState.ERROR, PULLED_HELD if snap.held else PULLED
                snap.message_code = MessageCode.PULLED_HELD if snap.held else MessageCode.PULLED
                snap.mounts = self._mounts(conf) if self._is_mounted(conf) else {}
                return snap
        if self._is_mounted(conf):
            snap.state = DataState.MOUNTED
            snap.mounts = self._mounts(conf)
        return snap

    def _is_mounted(self, conf: PoolConf) -> bool:
        if conf.pool_type is Backend.ZFS:
            return run(["zpool", "list", "-H", conf.pool_name], check=False).returncode == 0 \
                if filesystems.have("zpool") else False
        return _mounted_at(self.paths.mountpoint)

    def _mounts(self, conf: PoolConf) -> dict[str, str]:
        mounts = {"data": str(self.paths.mountpoint)}
        if _mounted_at(self.paths.incus_state):
            mounts["incus-state"] = str(self.paths.incus_state)
        return mounts

    def hold_if_pulled(self) -> bool:
        """Hold the I/O of a data disk just pulled out, so that nothing written
        is lost if it comes back; True if it was held now. Skipped while a job
        runs: the job reads the state again when it ends."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            snap = self.read(reload=False)
            if snap.conf is None or snap.held or not dm.backing_gone(snap.conf.mapper_name):
                return False  # not pulled, already held, or given up
            dm.hold(snap.conf.mapper_name)
            events.data_disk_pulled(snap.conf.pool_name)
            return True
        finally:
            self._lock.release()

    @staticmethod
    def filesystems() -> tuple[Backend, ...]:
        """What the data disk can be made with now, the preferred first."""
        return filesystems.available()

    @staticmethod
    def why_missing(backend: Backend) -> str:
        return filesystems.why_missing(backend)

    def candidates(self) -> list[disks.Disk]:
        return disks.list_disks(self.boot_disks(), self.allow_loop, loops_under=self.loops_under)

    # ---- setup ----
    def setup(self, job: Job, request: SetupRequest) -> str:
        with self._lock:
            return self._setup(job, request)

    def _setup(self, job: Job, request: SetupRequest) -> str:
        job.progress("checking")
        check_pool_name(request.pool_name)
        if request.encryption is Encryption.LUKS2 and not request.secret:
            raise InvalidArgument("a passphrase is needed to encrypt the data disk")
        with self.store.transaction() as pdir:
            existing = read_pool_conf(pdir)
        if existing is not None:
            raise InvalidArgument(f"a data disk is already set up (pool {existing.pool_name}); "
                                  "remove pool.conf from PERSIST to set up another")
        disk = disks.choose(request.disk, self.boot_disks(), self.allow_loop)
        missing = self.why_missing(request.backend)
        if missing:  # said before the disk is touched
            others = [b.value for b in self.filesystems() if b is not request.backend]
            raise NotFound(f"{missing}: " + (f"choose {' or '.join(others)}" if others
                                             else "no data disk can be made here"),
                           code=ErrorCode.FILESYSTEM_UNAVAILABLE)
        job.check_cancelled()
        job.commit()  # from here the disk is being overwritten: no half-way stop
        made = _Made()
        try:
            conf = self._format(job, request, disk, made)
            notes = self._incus_pool(job, conf)
            job.progress("saving")
            with self.store.transaction() as pdir:
                write_pool_conf(pdir, conf)  # last: the disk now counts as set up
        except BaseException:
            made.undo()
            raise
        log.info("data disk %s set up: pool %s (%s, %s)", disk.device, conf.pool_name,
                 conf.pool_type, conf.encryption)
        return f"data disk {disk.device} set up as pool {conf.pool_name}" + notes

    def _format(self, job: Job, request: SetupRequest, disk: disks.Disk,
                made: _Made) -> PoolConf:
        job.progress("formatting")
        run(["wipefs", "--all", "--quiet", disk.device], timeout=120)
        target, luks_uuid = disk.device, None
        name = f"{LABEL_PREFIX}{request.pool_name}"
        if request.encryption is Encryption.LUKS2:
            luks_uuid = luks.format_luks2(disk.device, request.secret, label=name,
                                          iter_time_ms=self.paths.luks_unlock_ms,
                                          memory_kib=self.paths.luks_memory_kib,
                                          iterations=self.paths.luks_iterations)
            job.progress("opening")
            target = luks.open_luks(disk.device, request.secret, name)
            made.add(lambda: luks.close_luks(name))
        job.progress("creating")
        mnt = self.paths.mountpoint
        if request.backend is Backend.ZFS:
            zfs.create_pool(request.pool_name, target, mnt)
            made.add(lambda: zfs.export_pool(request.pool_name))
            zfs.create_dataset(request.pool_name, STATE_SUBVOLUME, mnt / STATE_SUBVOLUME)
            zfs.create_dataset(request.pool_name, INCUS_SUBVOLUME, "none")  # Incus mounts it
            fs_uuid = zfs.pool_property(request.pool_name, "guid")
        else:
            btrfs.make_filesystem(target, name)
            btrfs.mount(target, mnt)
            made.add(lambda: btrfs.unmount(mnt))
            btrfs.create_subvolume(mnt, STATE_SUBVOLUME)
            btrfs.create_subvolume(mnt, INCUS_SUBVOLUME)
            fs_uuid = _blkid(target, "UUID")
        return PoolConf(pool_name=request.pool_name, pool_type=request.backend,
                        encryption=request.encryption, luks_uuid=luks_uuid,
                        fs_uuid=fs_uuid or None, disk_id=disk.by_id or str(disk.device),
                        incus_pool=request.pool_name, created_at=datetime.now(UTC))

    def _incus_pool(self, job: Job, conf: PoolConf) -> str:
        job.progress("incus")
        source = f"{conf.pool_name}/{INCUS_SUBVOLUME}" if conf.pool_type is Backend.ZFS \
            else str(self.paths.mountpoint / INCUS_SUBVOLUME)
        if not incus.running(self.paths.incus_socket):
            # Incus has not started yet (first boot): its state goes to the disk
            # now, and its pool is made once it runs (anklume-incus-pool.service).
            self._bind_incus_state()
            incus.write_pending_pool(self.paths.mountpoint, conf.pool_name,
                                     conf.pool_type.value, source)
            return "; Incus is not running yet: its storage pool is made when it starts"
        incus.create_storage_pool(self.paths.incus_socket, conf.pool_name,
                                  conf.pool_type.value, source)
        return f"; Incus storage pool {conf.pool_name} created"

    # ---- unlock ----
    def unlock(self, job: Job, secret: bytes) -> str:
        with self._lock:
            return self._unlock(job, secret)

    def _unlock(self, job: Job, secret: bytes) -> str:
        job.progress("checking")
        wait = self.locked_out_until - time.monotonic()
        if wait > 0:
            raise Busy(f"{MAX_ATTEMPTS} wrong passphrases: try again in {int(wait) + 1} s")
        snap = self.read()
        conf = snap.conf
        if conf is None:
            raise NotFound(snap.message or "no data disk is set up (run anklumectl first-boot)")
        if snap.pulled:
            return self._resume(job, conf, secret)
        if snap.state is DataState.MOUNTED:
            return f"the data disk is already mounted at {self.paths.mountpoint}"
        if conf.encryption is Encryption.LUKS2 and snap.state is DataState.LOCKED:
            device = self.find(conf)
            job.progress("unlocking")
            self._open(conf, device, secret)
        job.check_cancelled()
        job.commit()
        job.progress("mounting")
        self._mount(conf)
        self._bind_incus_state()
        mounts = self._mounts(conf)
        log.info("data disk mounted: %s", mounts)
        return "data disk mounted: " + ", ".join(f"{k} at {v}" for k, v in mounts.items())

    def _resume(self, job: Job, conf: PoolConf, secret: bytes) -> str:
        """The pulled disk is back: its held mapping goes on on it (anklumed/data/dm.py)."""
        device = self.find(conf)
        spare = f"{conf.mapper_name}-back"
        if dm.exists(spare):  # left by an attempt that stopped half-way
            dm.remove_deferred(spare)
        job.progress("unlocking")
        self._open(conf, device, secret, name=spare)
        job.commit()
        job.progress("resuming")
        dm.move_table(spare, conf.mapper_name)
        if conf.pool_type is Backend.ZFS:
            zfs.clear_errors(conf.pool_name)  # the suspended pool goes on
        elif _read_only_after_error(self.paths.mountpoint):
            # BTRFS stopped on a write error before the I/O was held: mount it afresh.
            job.progress("mounting")
            self._unmount_all(conf, DataState.MOUNTED)
        if not self._is_mounted(conf):
            self._mount(conf)
        self._bind_incus_state()
        log.info("data disk (pool %s) back at %s: resumed", conf.pool_name, device)
        return f"data disk back at {device}: it carries on where it stopped"

    def find(self, conf: PoolConf) -> Path:
        """The disk of this pool: by UUID (from any stick), whatever its name today."""
        uuid = conf.luks_uuid if conf.encryption is Encryption.LUKS2 else conf.fs_uuid
        by_uuid = Path("/dev/disk/by-uuid") / (uuid or "-")
        if uuid and by_uuid.exists():
            return by_uuid.resolve()
        for disk in disks.list_disks(self.boot_disks(), allow_loop=True):
            if uuid and _blkid(disk.device, "UUID") == uuid:
                return disk.device
        raise NotFound(f"the data disk of pool {conf.pool_name} is not plugged in "
                       f"(looking for {'LUKS' if conf.luks_uuid else 'filesystem'} UUID {uuid})")

    def _open(self, conf: PoolConf, device: Path, secret: bytes, name: str = "") -> None:
        key = secret
        if not key and conf.key_file:
            key = Path(conf.key_file).read_bytes()
        try:
            # A spare mapping lends its table to a held one: its key must be in
            # the table, not in cryptsetup's (short-lived) keyring.
            luks.open_luks(device, key, name or conf.mapper_name, keyring=not name)
        except IncorrectPassphrase:
            self.failures += 1
            left = MAX_ATTEMPTS - self.failures
            events.data_unlock_failed(conf.pool_name, left)
            if left <= 0:
                self.failures = 0
                self.locked_out_until = time.monotonic() + LOCKOUT_SECONDS
                raise IncorrectPassphrase(
                    f"wrong passphrase, {MAX_ATTEMPTS} times: unlocking is paused for "
                    f"{int(LOCKOUT_SECONDS)} s") from None
            raise IncorrectPassphrase(f"wrong passphrase for the data disk; {left} "
                                      f"attempt{'s' if left > 1 else ''} left") from None
        self.failures = 0

    def _mount(self, conf: PoolConf) -> None:
        mnt = self.paths.mountpoint
        if conf.pool_type is Backend.ZFS:
            search = luks.MAPPER if conf.encryption is Encryption.LUKS2 else Path("/dev")
            zfs.import_pool(conf.pool_name, search)
        else:
            device = luks.MAPPER / conf.mapper_name if conf.encryption is Encryption.LUKS2 \
                else self.find(conf)
            btrfs.mount(device, mnt)

    def _bind_incus_state(self) -> None:
        state = self.paths.mountpoint / STATE_SUBVOLUME
        if _mounted_at(self.paths.incus_state) or not state.is_dir():
            return
        self.paths.incus_state.mkdir(parents=True, exist_ok=True)
        run(for_system(["mount", "--bind", state, self.paths.incus_state]))
        incus.listen_again()  # the bind hid the socket's node

    # ---- adopt ----
    def adopt(self, job: Job, device: str, secret: bytes) -> str:
        with self._lock:
            return self._adopt(job, device, secret)

    def _adopt(self, job: Job, device: str, secret: bytes) -> str:
        """Take on a data disk another stick set up: open it, recognise what is
        on it, write this stick's pool.conf, mount it. Nothing is formatted."""
        job.progress("checking")
        if self.read().conf is not None:
            raise InvalidArgument("this stick already has a data disk (pool.conf exists)")
        found = [a for a in adoptable(self.candidates())
                 if str(a.device) == str(Path(device).resolve())]
        if not found:
            raise NotFound(f"{device} is not an anklume data disk that can be adopted")
        disk = found[0]
        conf = PoolConf(pool_name=disk.pool, pool_type=Backend.BTRFS,
                        encryption=Encryption.LUKS2, luks_uuid=disk.luks_uuid)
        job.progress("unlocking")
        self._open(conf, disk.device, secret)
        job.commit()
        mapper = luks.MAPPER / conf.mapper_name
        fstype = _blkid(mapper, "TYPE")
        if fstype not in ("btrfs", "zfs_member"):
            luks.close_luks(conf.mapper_name)
            raise InvalidArgument(f"{device} opens, but holds {fstype or 'nothing known'}")
        backend = Backend.ZFS if fstype == "zfs_member" else Backend.BTRFS
        conf = conf.model_copy(update={
            "pool_type": backend, "disk_id": str(disk.device), "incus_pool": disk.pool,
            "fs_uuid": _blkid(mapper, "UUID") or None, "created_at": datetime.now(UTC)})
        job.progress("mounting")
        try:
            self._mount(conf)
        except BaseException:
            luks.close_luks(conf.mapper_name)  # as it was: a retry starts clean
            raise
        try:
            self._check_layout(conf, device)
        except BaseException:
            self._unmount_all(conf, DataState.MOUNTED)
            luks.close_luks(conf.mapper_name)  # as it was: nothing kept open
            raise
        self._bind_incus_state()
        job.progress("saving")
        with self.store.transaction() as pdir:
            write_pool_conf(pdir, conf)
        log.info("data disk %s adopted: pool %s (%s)", disk.device, conf.pool_name, backend)
        return f"data disk {disk.device} adopted: pool {conf.pool_name} ({backend}), mounted"

    def _check_layout(self, conf: PoolConf, device: str) -> None:
        """A disk whose setup was cut short (a power cut between the LUKS
        format and pool.conf) has the label of a data disk but not all that
        setup makes: adopting it would take a half-made disk for a good one."""
        if conf.pool_type is Backend.ZFS:
            present = set(zfs.datasets(conf.pool_name))
        else:
            present = set(btrfs.subvolumes(self.paths.mountpoint))
        missing = [name for name in (STATE_SUBVOLUME, INCUS_SUBVOLUME) if name not in present]
        if missing:
            raise InvalidArgument(
                f"{device} opens, but its setup never finished (no {' or '.join(missing)}); "
                "nothing was changed: set it up again with anklumectl data setup (it erases it)")

    # ---- keys ----
    def change_passphrase(self, current: bytes, new: bytes) -> None:
        with self._lock:
            luks.change_key(self._luks_device(), current, new, self.paths.luks_unlock_ms,
                            self.paths.luks_memory_kib, self.paths.luks_iterations)
        log.info("data disk passphrase changed")

    def add_recovery_key(self, current: bytes) -> bytes:
        """A new random key in a second keyslot, returned once, stored nowhere."""
        key = recovery_key()
        with self._lock:
            luks.add_key(self._luks_device(), current, key, self.paths.luks_unlock_ms,
                         self.paths.luks_memory_kib, self.paths.luks_iterations)
        log.info("data disk recovery key added")
        return key

    def _luks_device(self) -> Path:
        conf = self.read().conf
        if conf is None or conf.encryption is not Encryption.LUKS2:
            raise InvalidArgument("the data disk is not encrypted: it has no passphrase")
        return self.find(conf)

    # ---- lock ----
    def lock(self, job: Job, stop_incus: bool) -> str:
        with self._lock:
            return self._lock_disk(job, stop_incus)

    def _lock_disk(self, job: Job, stop_incus: bool) -> str:
        job.progress("checking")
        snap = self.read()
        conf = snap.conf
        if conf is None:
            raise NotFound(snap.message or "no data disk is set up")
        if snap.pulled:
            return self._let_go(job, conf)
        if stop_incus:
            job.progress("stopping incus")
            incus.stop_service()
        busy = [h for path in (self.paths.incus_state, self.paths.mountpoint)
                if _mounted_at(path) for h in holders(path)]
        if busy:
            raise Busy("the data disk is in use by " + ", ".join(sorted(set(busy))) +
                       "; nothing was unmounted")
        job.check_cancelled()
        job.commit()
        job.progress("unmounting")
        self._unmount_all(conf, snap.state)
        if conf.encryption is Encryption.LUKS2 and dm.exists(conf.mapper_name):
            job.progress("closing")
            luks.close_luks(conf.mapper_name)
        return f"data disk {conf.pool_name} locked"


    def _let_go(self, job: Job, conf: PoolConf) -> str:
        """Give up a pulled disk: what waits to be written fails, the mounts are
        detached (lazily: programs may still hold files), the mapping goes when
        its last user does."""
        if conf.pool_type is Backend.ZFS and self._is_mounted(conf):
            raise Failed("ZFS cannot let go of a pool whose disk is gone (openzfs/zfs#11082): "
                         "plug the disk back in and unlock it, or restart the computer "
                         "(what was not written is then lost)")
        job.commit()
        job.progress("unmounting")
        dm.give_up(conf.mapper_name)
        for path in (self.paths.incus_state, self.paths.mountpoint):
            if _mounted_at(path):
                run(for_system(["umount", "--lazy", path]), timeout=60)
        dm.remove_deferred(conf.mapper_name)
        log.warning("the pulled data disk (pool %s) was let go", conf.pool_name)
        return f"data disk {conf.pool_name} let go; plug it in and unlock it to use it again"

    def _unmount_all(self, conf: PoolConf, state: DataState) -> None:
        """The Incus state bind, then the data; all or nothing. Something may
        open a file between the holders check and here: then the bind is put
        back, and the caller hears Busy with everything still mounted."""
        bound = _mounted_at(self.paths.incus_state)
        try:
            if bound:
                run(for_system(["umount", self.paths.incus_state]))
        except CommandError as e:
            raise Busy(f"the Incus state on the data disk could not be unmounted: {e}; "
                       "nothing was unmounted") from None
        try:
            if conf.pool_type is Backend.ZFS and state is DataState.MOUNTED:
                zfs.export_pool(conf.pool_name)
            elif _mounted_at(self.paths.mountpoint):
                btrfs.unmount(self.paths.mountpoint)
        except CommandError as e:
            if bound:
                self._bind_incus_state()
            raise Busy(f"the data disk could not be unmounted: {e}; it stays mounted") \
                from None


class _Made:
    """What a setup made so far, undone in reverse if it fails."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def add(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def undo(self) -> None:
        for step in reversed(self._undo):
            try:
                step()
            except (AnklumeError, OSError) as e:
                log.error("undoing a failed setup: %s", e)


RECOVERY_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U


def recovery_key() -> bytes:
    """40 characters in 8 groups (200 bits), easy to copy by hand from paper."""
    chars = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(40))
    return "-".join(chars[i:i + 5] for i in range(0, 40, 5)).encode()


def _read_only_after_error(mountpoint: Path) -> bool:
    """A filesystem the kernel turned read-only (BTRFS does so on a write
    error): "ro" in its superblock options, the last mount at ``mountpoint``."""
    mounts = [m for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text())
              if m.mountpoint == str(mountpoint)]
    return bool(mounts) and "ro" in mounts[-1].options.split(",")


def _blkid(device: Path, tag: str) -> str:
    return disks.blkid(device).get(tag, "")

