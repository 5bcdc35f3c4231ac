"""Run one update the way anklumed does, and die at event K (a power cut).

    python -m tests.service.update_crasher CONFIG SOURCE K

Events are the updater's progress reports and the steps of every PERSIST
write, in order (devtools/update_direct.py). At event K the process ends
with os._exit(77): no finally, no cleanup, the slot open for writing and
PERSIST possibly mounted. With K = -1 the update runs to the end and the
number of events is printed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from anklumed.slots.update import UpdateRequest
from devtools.update_direct import run_update


def main(config: Path, source: str, crash_at: int) -> int:
    events = [0]

    def event(_job: object, _event: str) -> None:
        if events[0] == crash_at:
            os._exit(77)
        events[0] += 1

    print(asyncio.run(run_update(config, UpdateRequest(source), event)))
    print(f"events={events[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
