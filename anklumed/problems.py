"""What a published problem is about, as a stable word.

The Manager's ``ProblemCodes`` on the bus, parallel to the sentences of
``Problems`` (docs/dbus.md "Codes"): a tray picks its icon, a translation
its sentence, by the code; the sentence says which file and what value.
"""

from __future__ import annotations

from enum import StrEnum


class ProblemCode(StrEnum):
    HANDOFF_DAMAGED = "handoff-damaged"  # a value of the boot hand-off cannot be used
    KERNEL_OF_OTHER_SLOT = "kernel-of-other-slot"  # the system runs on the other slot's kernel
    BOOT_STICK_UNKNOWN = "boot-stick-unknown"  # not found, ambiguous, or without PERSIST
    PERSIST_DAMAGED = "persist-damaged"  # a PERSIST file or value cannot be used
    PERSIST_UNREADABLE = "persist-unreadable"  # ANKLUME-PERSIST cannot be read at all
    POOL_CONF_UNUSABLE = "pool-conf-unusable"  # the data disk's pool.conf cannot be used
    MORE_PROBLEMS = "more-problems"  # the list was cut: this line says how many more
