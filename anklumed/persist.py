"""ANKLUME-PERSIST: a small ext4 partition of shell-readable state files.

The partition is mounted only for the length of a transaction, so the stick can
be pulled at any other moment (DESIGN.md §2). Every write is atomic: NAME.tmp is
written and fsynced, renamed over NAME, and the directory fsynced, so a power
cut leaves either the old or the new content, never a mix. Reads are bounded
and lenient; interpreting values is left to the owners (slots/, data/).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from anklumed.command import CommandError, run
from anklumed.errors import Failed, NotFound

log = logging.getLogger(__name__)

DEFAULT_MOUNTPOINT = Path("/mnt/anklume-persist")
MAX_FILE_BYTES = 64 * 1024  # every PERSIST file is tiny; refuse to slurp a huge one
TMP_SUFFIX = ".tmp"

# Names of the steps of an atomic write, in order. Tests inject a crash
# before each of them (tests/service/test_persist_crash.py).
WRITE_STEPS = ("open", "write", "fsync", "close", "rename", "fsync-dir")
StepHook = Callable[[str], None]


class PersistUnavailable(NotFound):
    """ANKLUME-PERSIST cannot be reached (stick pulled, partition missing)."""


class FileTooLarge(Failed):
    pass


def parse_kv(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse ``KEY=value`` lines leniently; return (values, problems).

    Accepts blank lines, ``#`` comments, spaces around ``=``, a missing final
    newline and a value wrapped in one pair of quotes (people add them).
    """
    values: dict[str, str] = {}
    problems: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.replace("_", "").isalnum() or not key.isascii():
            problems.append(f"line {lineno} is not KEY=value")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.upper()] = value
    return values, problems


def format_kv(values: dict[str, str]) -> str:
    """Serialise to ``KEY=value`` lines a busybox shell can source."""
    lines = []
    for key, value in values.items():
        if "\n" in value or not key.replace("_", "").isalnum():
            raise ValueError(f"cannot store {key!r} in a KEY=value file")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


class PersistDir:
    """The state files of a mounted (or plain, for tests) PERSIST directory."""

    def __init__(self, root: Path, step_hook: StepHook | None = None) -> None:
        self.root = root
        self._hook = step_hook

    def path(self, name: str) -> Path:
        if name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"invalid PERSIST file name {name!r}")
        return self.root / name

    def read_text(self, name: str) -> str | None:
        """Content of ``name`` (None if absent); bounded, undecodable bytes replaced."""
        try:
            with self.path(name).open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise Failed(f"PERSIST {name} is a directory, not a file") from None
        if len(data) > MAX_FILE_BYTES:
            raise FileTooLarge(f"PERSIST {name} is larger than {MAX_FILE_BYTES} bytes")
        return data.decode("utf-8", errors="replace")

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomically replace ``name`` with ``data``; see the module docstring."""
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + TMP_SUFFIX)
        self._step("open")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            self._step("write")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self._step("fsync")
            os.fsync(fd)
        finally:
            self._step("close")
            os.close(fd)
        self._step("rename")
        tmp.replace(target)
        self._step("fsync-dir")
        fsync_dir(target.parent)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()
            fsync_dir(self.path(name).parent)

    def clean_temporaries(self) -> list[str]:
        """Remove ``*.tmp`` left by an interrupted write; return their names."""
        removed = []
        for tmp in sorted(self.root.rglob("*" + TMP_SUFFIX)):
            tmp.unlink(missing_ok=True)
            removed.append(str(tmp.relative_to(self.root)))
        return removed

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(name)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        self.device = device
        self.mountpoint = mountpoint
        self.directory = directory
        self._lock = threading.Lock()
        self._active = False
        self.step_hook: StepHook | None = None

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
                    yield PersistDir(self.mountpoint, self.step_hook)
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


