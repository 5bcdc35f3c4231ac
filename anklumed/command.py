"""The one wrapper through which anklumed runs external programs.

Why one wrapper: every call gets the same sanitised environment, a timeout,
a closed stdin unless data is passed, a debug log of the command line, and a
failure that carries argv, exit status and the tail of stderr. Secrets travel
only through ``input`` (stdin), never argv or the environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from anklumed.errors import ErrorCode, Failed

log = logging.getLogger(__name__)

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STDERR_TAIL = 800
# util-linux's mount adds this line under every failed mount(2); the line
# above it is the one that says why.
_MOUNT_HINT = "dmesg(1) may have more information after failed mount system call."

Arg = str | Path


class OnEventLoop(RuntimeError):
    """A programming error: ``run`` was called on a thread that runs an
    asyncio loop. The program would block the loop, and with it every D-Bus
    reader, for as long as it runs: call it through ``asyncio.to_thread``."""


class CommandError(Failed):
    """An external program failed or timed out."""

    default_code = ErrorCode.COMMAND_FAILED

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr[-_STDERR_TAIL:]
        what = "timed out" if returncode is None else f"exited with status {returncode}"
        lines = [line.strip() for line in self.stderr.strip().splitlines()]
        detail = [line for line in lines if line and line != _MOUNT_HINT][-1:] or [""]
        super().__init__(f"{self.argv[0]} {what}: {detail[0]}".rstrip(": "))


def run(
    argv: Sequence[Arg],
    *,
    timeout: float = 60.0,
    input: bytes | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return its completed process; raise CommandError on failure.

    Never on the event loop's thread (OnEventLoop): from a coroutine, call it
    through ``asyncio.to_thread``."""
    args = [os.fspath(a) for a in argv]
    _refuse_on_event_loop(args)
    log.debug("+ %s", shlex.join(args))
    environment = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PATH": _PATH}
    if env:
        environment.update(env)
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=environment,
            timeout=timeout,
            check=False,
            pass_fds=tuple(pass_fds),
        )
    except subprocess.TimeoutExpired as e:
        stderr = (e.stderr or b"").decode(errors="replace")
        raise CommandError(args, None, stderr) from None
    except FileNotFoundError:
        raise CommandError(args, 127, f"{args[0]}: command not found") from None
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def _refuse_on_event_loop(args: list[str]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop on this thread: a worker thread, or a plain script
    raise OnEventLoop(f"{args[0]} would block the event loop: "
                      "run it through asyncio.to_thread")
