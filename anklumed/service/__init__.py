"""The D-Bus face of anklumed: the only package that knows about D-Bus."""

from anklumed.service import dbus_next_fixes as _dbus_next_fixes  # noqa: F401 - applies a fix
