"""What can go wrong for a client, as one sentence and a stable exit code."""

from __future__ import annotations

import re
from enum import IntEnum

from anklume_client.interface import ERROR_PREFIX

# Names the library gives what is not a D-Bus error reply.
USAGE = "Usage"
UNREACHABLE = "Unreachable"
TIMEOUT = "Timeout"
DISCONNECTED = "Disconnected"  # the bus or the daemon went away during a call
INCOMPATIBLE = "Incompatible"  # the daemon lacks a member this call needs


class ClientError(Exception):
    """A D-Bus error reply (its name and message), or one of the names above."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def short_name(self) -> str:
        """``IncorrectPassphrase`` for ``org.anklume.Live1.Error.IncorrectPassphrase``."""
        return self.name.removeprefix(ERROR_PREFIX)


def code_of(short_name: str) -> str:
    """The code of an error class's short name (IncorrectPassphrase →
    incorrect-passphrase): what a job's ErrorCode holds when the daemon
    gives no finer one."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", short_name).lower()


def daemon_error(short_name: str, message: str) -> ClientError:
    """An error with the daemon's own name (``NotFound``…), raised client-side."""
    return ClientError(ERROR_PREFIX + short_name, message)


class ExitCode(IntEnum):
    """anklumectl's exit codes (docs/cli.md): stable, for scripts."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_AUTHORIZED = 3
    INVALID_ARGUMENT = 4
    NOT_FOUND = 5
    BUSY = 6
    UNREACHABLE = 7
    VERIFICATION_FAILED = 8
    INCORRECT_PASSPHRASE = 9
    REFUSED_BOOT_DEVICE = 10
    CANCELLED = 11
    BOOT_CHECK_FAILED = 12
    INCOMPATIBLE = 13
    DISCONNECTED = 14
    INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C
