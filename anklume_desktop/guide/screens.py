"""The welcome screen's four choices."""

from __future__ import annotations

from textual.screen import Screen

from anklume_desktop.guide.mount import MountScreen
from anklume_desktop.guide.setup import SetupScreen
from anklume_desktop.guide.shortcuts import ShortcutsScreen
from anklume_desktop.guide.tour import TourScreen

SCREENS: dict[str, type[Screen[None]]] = {
    "setup": SetupScreen,
    "mount": MountScreen,
    "tour": TourScreen,
    "shortcuts": ShortcutsScreen,
}
