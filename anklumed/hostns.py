"""Mounts meant for the whole system, made from anklumed's own namespace.

anklumed.service is hardened with a private mount namespace (ProtectSystem,
PrivateTmp...). systemd makes it a slave of the system's: mounts reach the
daemon, but the daemon's never reach the system -- right for PERSIST, which
only anklumed uses, wrong for the data disk, which Incus and the user must
see. Those commands run in PID 1's mount namespace (nsenter), which the unit
allows for that purpose only (CAP_SYS_PTRACE to open it, CAP_SYS_CHROOT to
enter it, RestrictNamespaces= allowing mnt alone). Where the daemon already
shares the system's namespace (simulation, tests) nothing changes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from anklumed.command import Arg

log = logging.getLogger(__name__)
SYSTEM_NS = "/proc/1/ns/mnt"


@functools.cache
def _separate_namespace() -> bool:
    try:
        return Path("/proc/self/ns/mnt").readlink() != Path(SYSTEM_NS).readlink()
    except OSError as e:
        log.warning("cannot see the system's mount namespace (%s): the data disk's "
                    "mounts stay in anklumed's", e)
        return False


def for_system(argv: Sequence[Arg]) -> list[Arg]:
    """``argv``, run so that the mounts it makes are the system's."""
    if _separate_namespace():
        return ["nsenter", f"--mount={SYSTEM_NS}", "--", *argv]
    return list(argv)
