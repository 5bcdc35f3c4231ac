"""The browser is opened on a private page, so that the guide's one-time
token never reaches a command line (every local user reads /proc/PID/cmdline)."""

from __future__ import annotations

import stat
from pathlib import Path

from anklume_desktop.web_guard import Guard, launcher_page


def test_the_launcher_page_is_private_and_carries_the_token_inside_only(tmp_path: Path) -> None:
    guard = Guard(port=41234)
    url = guard.first_url
    page = launcher_page(url, tmp_path)
    assert guard.token not in page.as_uri()  # what the browser's argv will hold
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    text = page.read_text()
    assert 'http-equiv="refresh"' in text and f"token={guard.token}" in text
