"""Error types shared by every layer.

One class per D-Bus error name of DESIGN.md §5. The domain raises these; the
service layer (anklumed/service/boundary.py) is the single place that turns them
into D-Bus replies. Messages are written for the person reading them: what
happened and what to do next. They must never contain a secret.
"""

from __future__ import annotations

from enum import StrEnum

ERROR_PREFIX = "org.anklume.Live1.Error."


class ErrorCode(StrEnum):
    """A job's ``ErrorCode`` on the bus (docs/dbus.md "Codes"): what went
    wrong as a stable word a client can choose a sentence or an icon by. Each
    error class has its own; a raise site may give a finer one (a refused disk
    says why it is refused)."""

    FAILED = "failed"
    INTERNAL_ERROR = "internal-error"  # an unexpected exception inside anklumed
    NOT_AUTHORIZED = "not-authorized"
    BUSY = "busy"
    INVALID_ARGUMENT = "invalid-argument"
    NOT_FOUND = "not-found"
    VERIFICATION_FAILED = "verification-failed"
    INCORRECT_PASSPHRASE = "incorrect-passphrase"  # noqa: S105 - a word, not a secret
    REFUSED_BOOT_DEVICE = "refused-boot-device"
    CANCELLED = "cancelled"
    # RefusedBootDevice, finer: why the disk asked for may not hold the data
    # (anklumed.data.disks.Refusal.error_code).
    DISK_IS_BOOT_STICK = "disk-is-boot-stick"
    DISK_HOLDS_SYSTEM = "disk-holds-system"
    DISK_MOUNTED = "disk-mounted"
    DISK_HELD = "disk-held"
    DISK_READ_ONLY = "disk-read-only"
    DISK_TOO_SMALL = "disk-too-small"
    DISK_IS_LOOP = "disk-is-loop"
    # Failed and NotFound, finer: the stick and its PERSIST partition
    # (anklumed/persist.py, anklumed/stick.py) and external programs.
    PERSIST_UNAVAILABLE = "persist-unavailable"
    PERSIST_FILE_DAMAGED = "persist-file-damaged"
    PERSIST_READ_ONLY = "persist-read-only"
    PERSIST_FULL = "persist-full"
    PERSIST_IO_ERROR = "persist-io-error"
    AMBIGUOUS_STICK = "ambiguous-stick"
    COMMAND_FAILED = "command-failed"
    # NotFound, finer: the data disk cannot be made with the filesystem asked
    # for on this system (anklumed/data/filesystems.py).
    FILESYSTEM_UNAVAILABLE = "filesystem-unavailable"


class AnklumeError(Exception):
    """Base of every error the daemon reports to a caller."""

    dbus_suffix = "Failed"
    default_code = ErrorCode.FAILED

    def __init__(self, *args: object, code: ErrorCode | None = None) -> None:
        super().__init__(*args)
        self.code = code or self.default_code

    @property
    def dbus_name(self) -> str:
        return ERROR_PREFIX + self.dbus_suffix


class Failed(AnklumeError):
    dbus_suffix = "Failed"


class NotAuthorized(AnklumeError):
    dbus_suffix = "NotAuthorized"
    default_code = ErrorCode.NOT_AUTHORIZED


class Busy(AnklumeError):
    dbus_suffix = "Busy"
    default_code = ErrorCode.BUSY


class InvalidArgument(AnklumeError):
    dbus_suffix = "InvalidArgument"
    default_code = ErrorCode.INVALID_ARGUMENT


class NotFound(AnklumeError):
    dbus_suffix = "NotFound"
    default_code = ErrorCode.NOT_FOUND


class VerificationFailed(AnklumeError):
    dbus_suffix = "VerificationFailed"
    default_code = ErrorCode.VERIFICATION_FAILED


class IncorrectPassphrase(AnklumeError):
    dbus_suffix = "IncorrectPassphrase"
    default_code = ErrorCode.INCORRECT_PASSPHRASE


class RefusedBootDevice(AnklumeError):
    dbus_suffix = "RefusedBootDevice"
    default_code = ErrorCode.REFUSED_BOOT_DEVICE


class Cancelled(AnklumeError):
    dbus_suffix = "Cancelled"
    default_code = ErrorCode.CANCELLED


ALL_ERRORS: tuple[type[AnklumeError], ...] = (
    Failed,
    NotAuthorized,
    Busy,
    InvalidArgument,
    NotFound,
    VerificationFailed,
    IncorrectPassphrase,
    RefusedBootDevice,
    Cancelled,
)
