"""What the guide's screens share: the app's daemon connection."""

from __future__ import annotations

from textual.screen import Screen

from anklume_desktop.daemon import Daemon


async def daemon_of(screen: Screen[None]) -> Daemon:
    from anklume_desktop.guide.app import GuideApp

    app = screen.app
    assert isinstance(app, GuideApp)
    return await app.daemon()

