"""Whether the guide opens by itself at a desktop login: until the data disk is
set up or the person says no more (a file in their state directory)."""

from __future__ import annotations

import os
from pathlib import Path

from anklume_desktop.atomic import write_atomic
from anklume_desktop.daemon import DataState

MARK = "guide-dismissed"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "anklume"


def dismissed(directory: Path) -> bool:
    return (directory / MARK).exists()


def dismiss(directory: Path) -> None:
    write_atomic(directory / MARK, "the welcome guide no longer opens at login; "
                                   "'anklume-guide' opens it\n")


def opens_at_login(directory: Path, data_state: DataState) -> bool:
    # UNKNOWN (daemon not answering) opens it: the guide then says what is wrong.
    return not dismissed(directory) and data_state in (DataState.ABSENT, DataState.UNKNOWN)
