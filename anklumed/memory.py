"""Keep anklumed's resident memory small (issue 2's budget: 40 MB idle).

A live system may run toram, where every megabyte the daemon keeps is taken
from the user's containers. Two glibc settings matter for a Python daemon that
works in threads: each thread that allocates gets its own malloc arena (up to
8 per core), and memory freed after start-up (disk probing, imports) stays in
the arenas. Both are plain glibc calls; on another libc they do nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)
_M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - present in glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(count: int = 2) -> None:
    """Few malloc arenas for the worker threads: call before any thread starts."""
    libc = _glibc()
    if libc is not None and libc.mallopt(_M_ARENA_MAX, count) != 1:
        log.debug("mallopt(M_ARENA_MAX) refused")


def give_back() -> None:
    """Return the heap's free pages to the system (after start-up's peak)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
