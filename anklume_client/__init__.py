"""A typed client of anklumed's D-Bus API ``org.anklume.Live1``.

For anklumectl and the desktop clients (tray, notifications, welcome
guide): proxies for the daemon's objects (``proxies``), their properties as
frozen dataclasses and enums (``models``), tolerant of a daemon of another
revision (``properties``), jobs followed by their signals
(``proxies.Job.follow``), and one plain sentence for each state, code and
error (``words``). Checked against ``dbus/org.anklume.Live1.xml``
(``interface``). It imports nothing of anklumed: a client needs only
dbus-fast.
"""

from anklume_client.connection import Connection
from anklume_client.errors import ClientError, ExitCode
from anklume_client.proxies import DataDisk, Job, Manager, Slot

__all__ = ["ClientError", "Connection", "DataDisk", "ExitCode", "Job", "Manager", "Slot"]
