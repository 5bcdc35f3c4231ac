"""What the guide's Pilot tests share: a snapshot check of the screen.

A snapshot is the SVG textual exports of the screen, kept under
tests/snapshots/. ``ANKLUME_SNAPSHOT_UPDATE=1`` rewrites them (look at them in a
browser before committing); otherwise a difference fails and the new picture is
left beside the old one as ``NAME.new.svg``.
"""

from __future__ import annotations

import os
from pathlib import Path

from textual.app import App

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"


def assert_snapshot(app: App[None], name: str) -> None:
    picture = app.export_screenshot(title=name)
    expected = SNAPSHOTS / f"{name}.svg"
    new = SNAPSHOTS / f"{name}.new.svg"
    if os.environ.get("ANKLUME_SNAPSHOT_UPDATE") == "1" or not expected.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        expected.write_text(picture)
        if os.environ.get("CI") == "true":
            raise AssertionError(f"no snapshot {expected.name} was committed")
        return
    if picture != expected.read_text():
        new.write_text(picture)
        raise AssertionError(f"the screen differs from {expected.name}: see {new.name}")
    new.unlink(missing_ok=True)
