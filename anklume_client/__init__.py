"""A typed client of anklumed's D-Bus API ``org.anklume.Live1``.

For anklumectl and the desktop clients (tray, notifications, welcome
guide): proxies for the daemon's objects (``proxies``), their properties as
frozen dataclasses and enums (``models``), tolerant of a daemon of another
revision (``properties``), jobs followed by their signals
(``proxies.Job.follow``), and one plain sentence for each state, code and
error (``words``). Checked against ``dbus/org.anklume.Live1.xml``
(``interface``). It imports nothing of anklumed: a client needs only
dbus-fast.

The names below are imported when first asked for (PEP 562), not with the
package: anklumed imports ``anklume_client.dbus_fixes`` alone, and the rest
was a tenth of its imports at start (tests/unit/test_start_imports.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anklume_client.connection import Connection
    from anklume_client.errors import ClientError, ExitCode
    from anklume_client.proxies import DataDisk, Job, Manager, Slot

__all__ = ["ClientError", "Connection", "DataDisk", "ExitCode", "Job", "Manager", "Slot"]
_HOMES = {"Connection": "connection", "ClientError": "errors", "ExitCode": "errors",
          "DataDisk": "proxies", "Job": "proxies", "Manager": "proxies", "Slot": "proxies"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        # The import system then looks for a submodule of that name (words…).
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
