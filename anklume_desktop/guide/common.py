"""What the guide's screens share: the app's daemon connection, and following
the data disk while a screen shows it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from textual.screen import Screen
from textual.widgets import Static

from anklume_desktop import words
from anklume_desktop.daemon import Daemon, DaemonError, DataDisk


async def daemon_of(screen: Screen[None]) -> Daemon:
    from anklume_desktop.guide.app import GuideApp

    app = screen.app
    assert isinstance(app, GuideApp)
    return await app.daemon()


GONE = "anklumed stopped: what this screen shows comes back when it is running again."
RETRY = 1.0  # seconds between looks for a restarted anklumed


class FollowsData(Screen[None]):
    """A screen that shows the data disk and follows anklumed's changes of it
    (a disk plugged in or pulled, the disk locked or unlocked) until it is
    dismissed, across a restart of anklumed. It shows nothing before
    anklumed has looked at the disks: right after it starts it knows none yet
    (the guide opens at the first login, then), and an empty list must not
    read as "no disk". While the screen's own job runs (``busy``), the view
    holds still: the newest state is shown when the job ends."""

    def __init__(self) -> None:
        super().__init__()
        self.latest: DataDisk | None = None  # the newest state anklumed sent
        self.busy = False
        self._unfollow: Callable[[], None] | None = None

    def show(self, data: DataDisk) -> None:
        raise NotImplementedError

    def unreachable(self, error: DaemonError) -> None:
        self.say(words.explain_error(error), error=True)

    def say(self, text: str, error: bool = False) -> None:
        result = self.query_one("#result", Static)
        result.update(text)
        result.set_class(error, "error")

    @property
    def showing(self) -> bool:
        """Not once textual removes the screen: it removes the widgets first,
        and a change arriving then would find none (textual 2 has only its
        private flags to say so)."""
        return self.is_attached and not (self._pruning or self._closing)

    def follow(self) -> None:
        self.run_worker(self._follow(), exclusive=True, group="follow")

    async def _follow(self, again: bool = False) -> None:
        """``again``: after anklumed stopped, looking until it is back."""
        while True:
            try:
                unfollow = await (await daemon_of(self)).follow_data(self._changed,
                                                                     self._gone)
                break
            except DaemonError as e:
                if not again:
                    self.unreachable(e)
                    return
                await asyncio.sleep(RETRY)
        if not self.showing:  # dismissed while subscribing
            unfollow()
            return
        self._unfollow = unfollow
        if again and str(self.query_one("#result", Static).render()) == GONE:
            self.say("")

    def _changed(self, data: DataDisk) -> None:
        self.latest = data
        if self.showing and data.probed and not self.busy:
            self.show(data)

    def _gone(self) -> None:
        self.stop_following()
        if self.showing:
            self.say(GONE, error=True)
            self.run_worker(self._follow(again=True), exclusive=True, group="follow")

    def job_ended(self) -> None:
        """Called when the screen's job ended (not when the screen was
        dismissed during it: its worker is cancelled then)."""
        self.busy = False
        if self.showing and self.latest is not None and self.latest.probed:
            self.show(self.latest)

    def stop_following(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None

    def on_unmount(self) -> None:
        self.stop_following()
