"""One factor for every fixed wait of the service, VM and image tiers.

A wait is written as what the step needs on a quiet 2-core machine, with a
margin (at least twice that need where waiting longer costs time only when
the test fails anyway). On a slower or busier machine every such wait
grows by one factor, :func:`factor`:

- ``ANKLUME_TEST_SLOWNESS`` when set (a number ≥ 1: ``2`` when another QEMU
  runs beside the tests);
- else measured once per run: the load average of the last minute per core
  this process may use, between 1 and 4 (two runnable processes per core
  give each about half a core: twice as slow); the measure is then put in
  the environment, so every process the run starts uses the same.

The VM tier passes the host's factor into its guests (devtools/vm/guest.py),
where the load average says nothing about the host. Fixed sleeps that are
part of what a test checks (a watchdog period, a probe interval of the
daemon) are not waits for the machine and are not scaled.
"""

from __future__ import annotations

import functools
import os

ENV = "ANKLUME_TEST_SLOWNESS"
MEASURED_MAX = 4.0


@functools.cache
def factor() -> float:
    given = os.environ.get(ENV)
    if given is not None:
        try:
            value = float(given)
        except ValueError:
            raise SystemExit(f"{ENV}={given!r} is not a number (e.g. 2)") from None
        if not value >= 1:
            raise SystemExit(f"{ENV}={given!r}: give a number of at least 1")
        return value
    per_core = os.getloadavg()[0] / len(os.sched_getaffinity(0))
    measured = min(MEASURED_MAX, max(1.0, round(per_core, 1)))
    os.environ[ENV] = str(measured)  # the same factor for the processes this run starts
    return measured


def scaled(seconds: float) -> float:
    """``seconds`` of a quiet machine, on this one."""
    return seconds * factor()


def described() -> str:
    source = ENV if ENV in os.environ else "load average per core, measured"
    return f"waits scaled by {factor():g} ({source})"  # before factor() sets ENV
