"""ANKLUME-PERSIST: a small ext4 partition of shell-readable state files.

The partition is mounted only for the length of a transaction, so the stick can
be pulled at any other moment (DESIGN.md §2). Every write is atomic: NAME.tmp is
written and fsynced, renamed over NAME, and the directory fsynced, so a power
cut leaves either the old or the new content, never a mix. Reads are bounded
and lenient; interpreting values is left to the owners (slots/, data/).

Anyone can write this partition on another computer, so nothing on it is
trusted: links are never followed (not even a linked ``slots/``), only regular
files are opened, never in a way that can block, and every refusal is an
AnklumeError that names the file and says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from anklumed.command import CommandError, run
from anklumed.errors import AnklumeError, ErrorCode, Failed, NotFound

log = logging.getLogger(__name__)

DEFAULT_MOUNTPOINT = Path("/mnt/anklume-persist")
MAX_FILE_BYTES = 64 * 1024  # every PERSIST file is tiny; refuse to slurp a huge one
TMP_SUFFIX = ".tmp"

# Names of the steps of an atomic write, in order. Tests inject a crash
# before each of them (tests/service/test_robustness.py).
WRITE_STEPS = ("open", "write", "fsync", "close", "rename", "fsync-dir")
StepHook = Callable[[str], None]


class PersistUnavailable(NotFound):
    """ANKLUME-PERSIST cannot be reached (stick pulled, partition missing)."""

    default_code = ErrorCode.PERSIST_UNAVAILABLE


class PersistFileError(Failed):
    """A PERSIST file that cannot be used as it is: every message names the
    file, what is wrong, and what the person holding the stick can do."""

    default_code = ErrorCode.PERSIST_FILE_DAMAGED


class NotAFile(PersistFileError):
    """A link, a pipe, a directory, a device or a socket where a file should be."""


class FileTooLarge(PersistFileError):
    """Larger than any file anklume writes there: read as nothing, never rewritten."""


class PersistReadOnly(Failed):
    """A write-protect switch, a read-only device, or ext4 remounted after an error."""

    default_code = ErrorCode.PERSIST_READ_ONLY


class PersistFull(Failed):
    default_code = ErrorCode.PERSIST_FULL


class PersistIOError(Failed):
    """Any other refusal of the device: the stick may be failing."""

    default_code = ErrorCode.PERSIST_IO_ERROR


MAX_LINE_PROBLEMS = 5  # one bad line is worth naming; a page of them is one problem

# Directories are walked one component at a time from the root, never
# following a link: a PERSIST written on another computer must not make
# anklumed read or write anywhere else on this one.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the check must not hang the reader.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a device node",
    stat.S_IFBLK: "a device node",
    stat.S_IFSOCK: "a socket",
    stat.S_IFREG: "a file",
}
_FIX = "remove it from ANKLUME-PERSIST (any computer can mount it) and try again"


def kind_of(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "something that is not a file")


def _not_a(name: str, mode: int, wanted: str = "a file") -> NotAFile:
    return NotAFile(f"PERSIST {name} is {kind_of(mode)}, not {wanted}: {_FIX}")


def _os_error(e: OSError, name: str, doing: str) -> Failed:
    """One named error per way PERSIST can refuse: what happened, what to do."""
    if e.errno == errno.EROFS:
        return PersistReadOnly(
            f"ANKLUME-PERSIST is read-only (a write-protect switch, or the kernel found an "
            f"error on it), so {name} was not written: nothing was changed; check the stick "
            "with fsck on another computer, or replace it")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return PersistFull(
            f"ANKLUME-PERSIST is full, so {name} was not written: nothing was changed; "
            "delete the files that were added to it and try again")
    if e.errno in (errno.EISDIR, errno.ENOTEMPTY):
        return NotAFile(f"PERSIST {name} is a directory, not a file: {_FIX}")
    if e.errno == errno.ELOOP:
        return NotAFile(f"PERSIST {name} is a symbolic link, not a file: {_FIX}")
    return PersistIOError(f"cannot {doing} PERSIST {name}: {e.strerror or e}; "
                          "the stick may be failing: check it with fsck, or replace it")


def parse_kv(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse ``KEY=value`` lines leniently; return (values, problems).

    Accepts blank lines, ``#`` comments, spaces around ``=``, a missing final
    newline and a value wrapped in one pair of quotes (people add them).
    """
    values: dict[str, str] = {}
    problems: list[str] = []
    bad = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.replace("_", "").isalnum() or not key.isascii():
            bad += 1
            if bad <= MAX_LINE_PROBLEMS:
                problems.append(f"line {lineno} is not KEY=value")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.upper()] = value
    if bad > MAX_LINE_PROBLEMS:
        problems.append(f"and {bad - MAX_LINE_PROBLEMS} more lines are not KEY=value")
    return values, problems


def format_kv(values: dict[str, str]) -> str:
    """Serialise to ``KEY=value`` lines a busybox shell can source."""
    lines = []
    for key, value in values.items():
        if "\n" in value or not key.replace("_", "").isalnum():
            raise ValueError(f"cannot store {key!r} in a KEY=value file")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def decode(name: str, data: bytes) -> tuple[str, list[str]]:
    """The text of a PERSIST file and what is odd about its bytes. NUL and
    invalid UTF-8 are read as U+FFFD, so they can never pass as valid values."""
    problems = []
    if b"\0" in data:
        problems.append(f"PERSIST {name} holds NUL bytes (read as \ufffd)")
        data = data.replace(b"\0", "\ufffd".encode())
    try:
        return data.decode(), problems
    except UnicodeDecodeError:
        problems.append(f"PERSIST {name} holds bytes that are not UTF-8 text (read as \ufffd)")
        return data.decode(errors="replace"), problems


@dataclass
class _Staged:
    """A file written as NAME.tmp, waiting for its rename."""

    name: str
    dir_fd: int
    leaf: str
    tmp: str | None = None


class PersistDir:
    """The state files of a mounted (or plain, for tests) PERSIST directory.

    Nothing on PERSIST is trusted: no link is followed (for a file or any
    directory above it), nothing but a regular file is opened, reads are
    bounded and never block, and every refusal is an AnklumeError naming
    the file.
    """

    def __init__(self, root: Path, step_hook: StepHook | None = None,
                 writable: bool = False) -> None:
        self.root = root
        self._hook = step_hook
        self.writable = writable  # mounted read-write on purpose: read-only is a problem

    @staticmethod
    def parts(name: str) -> list[str]:
        parts = name.split("/")
        if any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise ValueError(f"invalid PERSIST file name {name!r}")
        return parts

    def path(self, name: str) -> Path:
        return self.root.joinpath(*self.parts(name))

    # ---- reading ---------------------------------------------------------
    def read_bytes(self, name: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
        """Content of ``name``, None if absent. Raises a PersistFileError (or
        another Failed) for anything that is not a readable regular file."""
        return self._read(name, limit, whole=True)

    def head(self, name: str, size: int) -> bytes | None:
        """The first ``size`` bytes of ``name`` (a large file is fine here)."""
        return self._read(name, size, whole=False)

    def _read(self, name: str, limit: int, whole: bool) -> bytes | None:
        parts = self.parts(name)
        try:
            dir_fd = self._dir_fd(parts[:-1], create=False)
            if dir_fd is None:
                return None
            try:
                return self._read_at(dir_fd, parts[-1], name, limit, whole)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise _os_error(e, name, "read") from None

    def read_text(self, name: str) -> str | None:
        """Content of ``name`` (None if absent); NUL and invalid UTF-8 as U+FFFD."""
        data = self.read_bytes(name)
        return None if data is None else decode(name, data)[0]

    def _read_at(self, dir_fd: int, leaf: str, name: str, limit: int,
                 whole: bool) -> bytes | None:
        try:
            st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise _not_a(name, st.st_mode)
            if whole and st.st_size > limit:
                raise self._too_large(name, limit)
            fd = os.open(leaf, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)  # swapped for something else since the check?
            if not stat.S_ISREG(st.st_mode):
                raise _not_a(name, st.st_mode)
            chunks, size = [], 0
            want = limit + 1 if whole else limit
            while size < want and (chunk := os.read(fd, want - size)):
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if size > limit:
            raise self._too_large(name, limit)
        return b"".join(chunks)

    @staticmethod
    def _too_large(name: str, limit: int) -> FileTooLarge:
        return FileTooLarge(f"PERSIST {name} is larger than {limit // 1024} KiB, so it was not "
                            "read (anklume writes it far smaller): remove what was added to it")

    def exists(self, name: str) -> bool:
        """Something (of any kind) is there; links are not followed."""
        return self.kind(name) is not None

    def kind(self, name: str) -> str | None:
        """What is at ``name`` ("a file", "a directory"...), None if nothing."""
        parts = self.parts(name)
        try:
            dir_fd = self._dir_fd(parts[:-1], create=False)
        except (OSError, AnklumeError):
            return None
        if dir_fd is None:
            return None
        try:
            return kind_of(os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return None
        finally:
            os.close(dir_fd)

    def health(self) -> list[str]:
        """Problems of the partition as a whole: read-only, full."""
        try:
            fs = os.statvfs(self.root)
        except OSError:
            return []
        found = []
        if self.writable and fs.f_flag & os.ST_RDONLY:
            found.append("ANKLUME-PERSIST is read-only (a write-protect switch, or the kernel "
                         "found an error on it): nothing can be marked or updated; check the "
                         "stick with fsck on another computer, or replace it")
        # f_bavail: what is left outside the blocks ext4 reserves (for root,
        # and for its own needs); below that a write can fail at any time.
        if fs.f_bavail * fs.f_frsize < 64 * 1024 or fs.f_favail < 8:
            found.append("ANKLUME-PERSIST is full: the boot cannot be marked good; delete the "
                         "files that were added to it")
        return found

    # ---- the walk --------------------------------------------------------
    def _dir_fd(self, parts: list[str], create: bool) -> int | None:
        """An fd of the directory ``parts`` below the root, reached without
        following links; None if it does not exist and ``create`` is False."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for depth, part in enumerate(parts):
            try:
                sub = self._subdir(fd, part, "/".join(parts[: depth + 1]), create)
            finally:
                os.close(fd)
            if sub is None:
                return None
            fd = sub
        return fd

    @staticmethod
    def _subdir(fd: int, part: str, where: str, create: bool) -> int | None:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(part, 0o755, dir_fd=fd)
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
            raise _not_a(where, mode, "a directory") from None

    # ---- writing ---------------------------------------------------------
    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomically replace ``name`` with ``data``; see the module docstring."""
        self.write_files([(name, data)])

    def write_files(self, files: Sequence[tuple[str, bytes]]) -> None:
        """Replace several files: every NAME.tmp is written and fsynced first,
        then they are renamed in the given order. A refusal (a directory in the
        way, read-only, full) comes before any rename, so nothing changes; a
        power cut during the renames leaves a prefix of them, as one write
        after another would. Whatever stood at NAME (a link, a pipe) is
        replaced by the rename, never written through."""
        staged: list[_Staged] = []
        try:
            for name, data in files:
                staged.append(self._stage(name, data))
            for item in staged:
                self._commit(item)
        finally:
            for item in staged:
                if item.tmp is not None:  # not renamed: leave nothing behind
                    with contextlib.suppress(OSError):
                        os.unlink(item.tmp, dir_fd=item.dir_fd)
                os.close(item.dir_fd)

    def _stage(self, name: str, data: bytes) -> _Staged:
        parts = self.parts(name)
        try:
            dir_fd = self._dir_fd(parts[:-1], create=True)
        except OSError as e:
            raise _os_error(e, name, "write") from None
        assert dir_fd is not None
        item = _Staged(name, dir_fd, parts[-1])
        try:
            self._check_replaceable(item)
            tmp = item.leaf + TMP_SUFFIX
            self._clear(dir_fd, tmp, name + TMP_SUFFIX)
            self._step("open")
            fd = os.open(tmp, _WRITE_FLAGS, 0o644, dir_fd=dir_fd)
            item.tmp = tmp
            try:
                self._step("write")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                self._step("fsync")
                os.fsync(fd)
            finally:
                self._step("close")
                os.close(fd)
        except BaseException as e:
            if item.tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(item.tmp, dir_fd=dir_fd)
            os.close(dir_fd)
            if isinstance(e, OSError):
                raise _os_error(e, name, "write") from None
            raise
        return item

    def _commit(self, item: _Staged) -> None:
        assert item.tmp is not None
        try:
            self._step("rename")
            os.rename(item.tmp, item.leaf, src_dir_fd=item.dir_fd, dst_dir_fd=item.dir_fd)
            item.tmp = None
            self._step("fsync-dir")
            os.fsync(item.dir_fd)
        except OSError as e:
            raise _os_error(e, item.name, "write") from None

    @staticmethod
    def _check_replaceable(item: _Staged) -> None:
        """A rename replaces any inode but a directory: name that one now."""
        try:
            mode = os.stat(item.leaf, dir_fd=item.dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            raise _not_a(item.name, mode)

    @staticmethod
    def _clear(dir_fd: int, leaf: str, name: str) -> None:
        """Remove whatever a crash (or a person) left at ``leaf``."""
        try:
            os.unlink(leaf, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise NotAFile(f"PERSIST {name} is a directory, not a file: {_FIX}") from None

    def remove(self, name: str) -> None:
        parts = self.parts(name)
        try:
            dir_fd = self._dir_fd(parts[:-1], create=False)
            if dir_fd is None:
                return
            try:
                self._clear(dir_fd, parts[-1], name)
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise _os_error(e, name, "remove") from None

    def clean_temporaries(self) -> list[str]:
        """Remove ``*.tmp`` left by an interrupted write; return their names.
        Best effort: what cannot be removed (read-only, a directory) stays and
        is named when a write needs its place."""
        removed = []
        for where in ([], ["slots"]):
            try:
                dir_fd = self._dir_fd(where, create=False)
            except (OSError, AnklumeError):
                continue
            if dir_fd is None:
                continue
            try:
                for entry in os.scandir(dir_fd):
                    if entry.name.endswith(TMP_SUFFIX) and not entry.is_dir(
                            follow_symlinks=False):
                        os.unlink(entry.name, dir_fd=dir_fd)
                        removed.append("/".join([*where, entry.name]))
            except OSError as e:
                log.warning("cannot remove temporaries from PERSIST: %s", e.strerror)
            finally:
                os.close(dir_fd)
        return removed

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)


def disk_seq(device: Path) -> str | None:
    """The kernel's sequence number of the disk holding ``device`` (Linux 5.15+),
    new for every medium attached; None where the kernel has none."""
    node = Path("/sys/class/block") / device.name
    for candidate in (node / "diskseq", node.resolve().parent / "diskseq"):
        with contextlib.suppress(OSError):
            return candidate.read_text().strip()
    return None


class PersistStore:
    """Mounts the PERSIST partition for each transaction and unmounts it after.

    ``device=None`` with ``directory`` set uses a plain directory instead (unit
    tests, development). Transactions are serialised by a lock; callers on the
    event loop run them in a worker thread.
    """

    def __init__(
        self,
        device: Path | None,
        mountpoint: Path = DEFAULT_MOUNTPOINT,
        directory: Path | None = None,
    ) -> None:
        self._device: Path | None = None
        self._disk_seq: str | None = None
        self.device = device
        self.mountpoint = mountpoint
        self.directory = directory
        self._lock = threading.Lock()
        self._active = False
        self.step_hook: StepHook | None = None

    @property
    def device(self) -> Path | None:
        return self._device

    @device.setter
    def device(self, device: Path | None) -> None:
        """The PERSIST partition of the stick just found; the disk's sequence
        number is noted with it (see same_disk)."""
        self._device = device
        self._disk_seq = disk_seq(device) if device is not None else None

    def same_disk(self) -> bool:
        """The device node still leads to the stick it was found on. A stick
        pulled and another disk given its name (/dev/sdb, a reused loop) get
        another sequence number: that disk's PERSIST must never be written."""
        return self._device is not None and (
            self._disk_seq is None or disk_seq(self._device) == self._disk_seq)

    @property
    def busy(self) -> bool:
        """True while a transaction holds PERSIST mounted (not safe to pull)."""
        return self._active

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PersistDir]:
        with self._lock:
            self._active = True
            try:
                if self.directory is not None:
                    yield PersistDir(self.directory, self.step_hook)
                    return
                self._mount()
                try:
                    yield PersistDir(self.mountpoint, self.step_hook, writable=True)
                finally:
                    self._unmount()
            finally:
                self._active = False

    def _mount(self) -> None:
        if self.device is None or not self.device.exists():
            raise PersistUnavailable(
                f"ANKLUME-PERSIST ({self.device or 'no device'}) is not available; "
                "is the boot stick plugged in?"
            )
        if not self.same_disk():
            raise PersistUnavailable(
                f"{self.device} is not on the boot stick any more (it was pulled and another "
                "disk took its name); plug the boot stick back in")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.mountpoint):
            # Left mounted by a crash of ours: take it down and start clean.
            log.warning("%s was still mounted; unmounting it first", self.mountpoint)
            self._unmount()
        try:
            run(
                ["mount", "-t", "ext4", "-o", "nodev,nosuid,noexec,noatime",
                 self.device, self.mountpoint],
                timeout=30,
            )
        except CommandError as e:
            raise PersistUnavailable(f"cannot mount ANKLUME-PERSIST {self.device}: {e}") from e

    def _unmount(self) -> None:
        try:
            run(["umount", self.mountpoint], timeout=60)
        except CommandError as e:
            if os.path.ismount(self.mountpoint):
                raise Failed(f"cannot unmount ANKLUME-PERSIST: {e}") from e
            log.debug("unmount of %s: %s", self.mountpoint, e)


