"""Error types shared by every layer.

One class per D-Bus error name of DESIGN.md §5. The domain raises these; the
service layer (anklumed/service/boundary.py) is the single place that turns them
into D-Bus replies. Messages are written for the person reading them: what
happened and what to do next. They must never contain a secret.
"""

from __future__ import annotations

ERROR_PREFIX = "org.anklume.Live1.Error."


class AnklumeError(Exception):
    """Base of every error the daemon reports to a caller."""

    dbus_suffix = "Failed"

    @property
    def dbus_name(self) -> str:
        return ERROR_PREFIX + self.dbus_suffix


class Failed(AnklumeError):
    dbus_suffix = "Failed"


class NotAuthorized(AnklumeError):
    dbus_suffix = "NotAuthorized"


class Busy(AnklumeError):
    dbus_suffix = "Busy"


class InvalidArgument(AnklumeError):
    dbus_suffix = "InvalidArgument"


class NotFound(AnklumeError):
    dbus_suffix = "NotFound"


class VerificationFailed(AnklumeError):
    dbus_suffix = "VerificationFailed"


class IncorrectPassphrase(AnklumeError):
    dbus_suffix = "IncorrectPassphrase"


class RefusedBootDevice(AnklumeError):
    dbus_suffix = "RefusedBootDevice"


class Cancelled(AnklumeError):
    dbus_suffix = "Cancelled"


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
