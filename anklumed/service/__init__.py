"""The D-Bus face of anklumed: the only package that knows about D-Bus."""

from anklumed.service import dbus_fixes as _dbus_fixes  # noqa: F401 - applies a fix
