"""LUKS2 through cryptsetup, the secret always on stdin.

Passphrases and key files reach cryptsetup through a pipe (``--key-file=-``),
never argv or the environment: both are readable by other processes. The bytes
are used as they are, without a trailing newline, which is also what
cryptsetup's own prompt and the systemd password agents hand over.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from anklumed.command import CommandError, run
from anklumed.errors import Failed, IncorrectPassphrase

MAPPER = Path("/dev/mapper")
# cryptsetup's exit status for "No key available with this passphrase".
_EXIT_NO_KEY = 2
_MEMINFO = Path("/proc/meminfo")
ARGON2_MAX_KIB = 1024 * 1024  # cryptsetup's own ceiling for the default


def argon2_memory_kib(meminfo: Path = _MEMINFO) -> int:
    """argon2id memory: a quarter of the available RAM, 64 MiB to 1 GiB.

    Unlocking needs that much RAM at once: a laptop with little free memory
    (or a toram boot that filled it) must still be able to open its disk.
    """
    available = ARGON2_MAX_KIB * 4
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1])
    return max(64 * 1024, min(ARGON2_MAX_KIB, available // 4))


def _memory(memory_kib: int | None) -> str:
    """The argon2id memory asked for (anklumed.toml ``luks_memory_mib``, which
    the simulation and the tests set low: under QEMU's emulation each MiB
    costs), or the RAM-sized default."""
    return str(memory_kib if memory_kib is not None else argon2_memory_kib())


def _pbkdf(iter_time_ms: int, memory_kib: int | None, iterations: int | None) -> list[str]:
    """argon2id's options: its time cost measured by cryptsetup's benchmark
    to last ``iter_time_ms``, or ``iterations`` passes given (anklumed.toml
    ``luks_iterations``: the benchmark alone takes seconds under QEMU's
    emulation, for the 4 passes it ends up with there)."""
    cost = ["--iter-time", str(iter_time_ms)] if iterations is None \
        else ["--pbkdf-force-iterations", str(iterations)]
    return ["--pbkdf", "argon2id", "--pbkdf-memory", _memory(memory_kib), *cost]


def format_luks2(device: Path, secret: bytes, *, label: str, iter_time_ms: int = 2000,
                 memory_kib: int | None = None, iterations: int | None = None) -> str:
    """Format ``device`` as LUKS2 with argon2id; return its UUID."""
    run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
         *_pbkdf(iter_time_ms, memory_kib, iterations), "--label", label, "--key-file=-",
         device], input=secret, timeout=600)
    return luks_uuid(device)


def _pipe_holding(secret: bytes) -> int:
    """A pipe's read end holding ``secret`` (a second secret for cryptsetup,
    read from /proc/self/fd/N: stdin carries the first)."""
    if len(secret) > 60 * 1024:
        raise ValueError("a key longer than a pipe's buffer")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, secret)
    finally:
        os.close(write_end)
    return read_end


def _with_second_secret(argv: list[str | Path], current: bytes, second: bytes) -> None:
    fd = _pipe_holding(second)
    try:
        run([*argv, f"/proc/self/fd/{fd}"], input=current, pass_fds=(fd,), timeout=600)
    except CommandError as e:
        if e.returncode == _EXIT_NO_KEY:
            raise IncorrectPassphrase("the passphrase does not open this disk") from None
        raise
    finally:
        os.close(fd)


def add_key(device: Path, current: bytes, new: bytes, iter_time_ms: int = 2000,
            memory_kib: int | None = None, iterations: int | None = None) -> None:
    """Add ``new`` in a free keyslot (a recovery key); ``current`` proves the right."""
    _with_second_secret(["cryptsetup", "luksAddKey", "--batch-mode",
                         *_pbkdf(iter_time_ms, memory_kib, iterations), "--key-file=-",
                         device], current, new)


def change_key(device: Path, current: bytes, new: bytes, iter_time_ms: int = 2000,
               memory_kib: int | None = None, iterations: int | None = None) -> None:
    """Replace the keyslot ``current`` opens with ``new`` (the others stay)."""
    _with_second_secret(["cryptsetup", "luksChangeKey", "--batch-mode",
                         *_pbkdf(iter_time_ms, memory_kib, iterations), "--key-file=-",
                         device], current, new)


def luks_uuid(device: Path) -> str:
    return run(["cryptsetup", "luksUUID", device]).stdout.decode().strip()


def is_luks(device: Path) -> bool:
    return run(["cryptsetup", "isLuks", device], check=False).returncode == 0


def open_luks(device: Path, secret: bytes, name: str, keyring: bool = True) -> Path:
    """Open ``device`` as /dev/mapper/<name>; IncorrectPassphrase on a wrong secret.
    Without ``keyring`` the volume key is in the dm table itself (anklumed/data/dm.py)."""
    extra = [] if keyring else ["--disable-keyring"]
    try:
        run(["cryptsetup", "open", "--type", "luks2", *extra, "--key-file=-", device, name],
            input=secret, timeout=600)
    except CommandError as e:
        if e.returncode == _EXIT_NO_KEY:
            raise IncorrectPassphrase("the passphrase does not open this disk") from None
        raise
    return MAPPER / name


def close_luks(name: str) -> None:
    try:
        run(["cryptsetup", "close", name], timeout=120)
    except CommandError as e:
        if re.search(r"busy|in use", e.stderr, re.I):
            raise Failed(f"{name} is still in use: {e}") from None
        raise
