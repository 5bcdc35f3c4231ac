"""How the guide is opened: the browser on a private page, so that the
guide's one-time token never reaches a command line (every local user reads
/proc/PID/cmdline); the tray's choice of a terminal, the browser, or a
sentence saying neither is there."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from anklume_desktop.guide.__main__ import NO_BROWSER
from anklume_desktop.tray.applet import guide_command
from anklume_desktop.web_guard import Guard, launcher_page
from devtools.slowness import scaled


def test_the_launcher_page_is_private_and_carries_the_token_inside_only(tmp_path: Path) -> None:
    guard = Guard(port=41234)
    url = guard.first_url
    page = launcher_page(url, tmp_path)
    assert guard.token not in page.as_uri()  # what the browser's argv will hold
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    text = page.read_text()
    assert 'http-equiv="refresh"' in text and f"token={guard.token}" in text


def _found(*names: str) -> Callable[[str], str | None]:
    return lambda name: f"/usr/bin/{name}" if name in names else None


def test_the_tray_opens_the_guide_in_a_terminal_else_the_browser_else_says_it_cannot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """foot on sway and labwc, konsole on KDE (no foot there), the web mode
    only with a browser: the image ships none (docs/desktop.md)."""
    monkeypatch.delenv("ANKLUME_TERMINAL", raising=False)
    guide = [sys.executable, "-m", "anklume_desktop.guide", "--open", "mount"]
    yes, no = (lambda: True), (lambda: False)
    assert guide_command("mount", _found("foot", "konsole"), no) == ["foot", *guide]
    assert guide_command("mount", _found("konsole"), no) == ["konsole", "-e", *guide]
    assert guide_command("mount", _found(), yes) == [*guide, "--web"]
    assert guide_command("mount", _found(), no) is None
    monkeypatch.setenv("ANKLUME_TERMINAL", "xterm")
    assert guide_command("", _found("xterm", "foot"), no) == ["xterm", *guide[:3]]
    assert guide_command("", _found("foot"), no) == ["foot", *guide[:3]]


def test_the_web_mode_says_so_when_no_browser_opens_the_link(tmp_path: Path) -> None:
    """No DISPLAY, WAYLAND_DISPLAY, TERM or BROWSER: Python's webbrowser finds
    none, as in the image's session (which has no browser)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "anklume_desktop.guide", "--web"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert "The guide is at http://127.0.0.1:" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=scaled(20))
    assert NO_BROWSER in err
    assert proc.returncode == 0 and "Traceback" not in err
    assert list(tmp_path.glob("anklume-guide-*")) == []  # the launcher page is removed
