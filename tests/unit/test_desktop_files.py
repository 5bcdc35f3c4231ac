"""The desktop session's files (desktop/) start programs the package installs."""

from __future__ import annotations

import configparser
import json
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESKTOP = ROOT / "desktop"
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def test_autostart_entries_run_installed_programs() -> None:
    entries = sorted((DESKTOP / "autostart").glob("*.desktop"))
    assert [p.name for p in entries] == ["anklume-guide.desktop", "anklume-tray.desktop"]
    for path in entries:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path)
        entry = parser["Desktop Entry"]
        assert entry["Type"] == "Application"
        words = shlex.split(entry["Exec"])
        if words[:2] == ["sh", "-c"]:  # a command line: its first program
            words = shlex.split(words[2])
        assert words[0] in SCRIPTS, path.name


def test_sway_starts_the_bar_mako_the_tray_and_the_guide() -> None:
    text = (DESKTOP / "sway" / "anklume.conf").read_text()
    assert "swaybar_command waybar" in text and "exec mako" in text
    assert "exec anklume-tray" in text
    assert "\nexec lxpolkit\n" in text  # the polkit agent (anklume_image/packages.py)
    assert "exec anklume-guide --first-login --check && foot anklume-guide" in text
    assert {"anklume-tray", "anklume-guide"} <= SCRIPTS


def test_waybar_has_the_tray() -> None:
    config = json.loads((DESKTOP / "waybar" / "config.jsonc").read_text())
    assert "tray" in config["modules-right"]


def test_labwc_starts_the_bar_mako_the_polkit_agent_the_tray_and_the_guide() -> None:
    lines = (DESKTOP / "labwc" / "autostart").read_text().splitlines()
    for program in ("waybar", "mako", "lxpolkit", "anklume-tray"):
        assert any(line.split()[:1] == [program] and line.endswith("&") for line in lines), program
    assert "anklume-guide --first-login --check && foot anklume-guide &" in lines
