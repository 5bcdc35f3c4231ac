"""What the guide's screens share: the app's daemon connection, and following
the data disk while a screen shows it."""

from __future__ import annotations

from collections.abc import Callable

from textual.screen import Screen

from anklume_desktop.daemon import Daemon, DaemonError, DataDisk


async def daemon_of(screen: Screen[None]) -> Daemon:
    from anklume_desktop.guide.app import GuideApp

    app = screen.app
    assert isinstance(app, GuideApp)
    return await app.daemon()


class FollowsData(Screen[None]):
    """A screen that shows the data disk and follows anklumed's changes of it
    (a disk plugged in or pulled, the disk locked or unlocked) until it is
    dismissed. It shows nothing before anklumed has looked at the disks:
    right after it starts it knows none yet (the guide opens at the first
    login, then), and an empty list must not read as "no disk". While the
    screen's own job runs (``busy``), the view holds still: the newest state
    is shown when the job ends."""

    def __init__(self) -> None:
        super().__init__()
        self.latest: DataDisk | None = None  # the newest state anklumed sent
        self.busy = False
        self._unfollow: Callable[[], None] | None = None

    def show(self, data: DataDisk) -> None:
        raise NotImplementedError

    def unreachable(self, error: DaemonError) -> None:
        raise NotImplementedError

    def follow(self) -> None:
        self.run_worker(self._follow(), exclusive=True, group="follow")

    async def _follow(self) -> None:
        try:
            unfollow = await (await daemon_of(self)).follow_data(self._changed)
        except DaemonError as e:
            self.unreachable(e)
            return
        if not self.showing:  # dismissed while subscribing
            unfollow()
            return
        self._unfollow = unfollow

    @property
    def showing(self) -> bool:
        """Not once textual removes the screen: it removes the widgets first,
        and a change arriving then would find none (textual 2 has only its
        private flags to say so)."""
        return self.is_attached and not (self._pruning or self._closing)

    def _changed(self, data: DataDisk) -> None:
        self.latest = data
        if self.showing and data.probed and not self.busy:
            self.show(data)

    def job_ended(self) -> None:
        """Called when the screen's job ended (not when the screen was
        dismissed during it: its worker is cancelled then)."""
        self.busy = False
        if self.showing and self.latest is not None and self.latest.probed:
            self.show(self.latest)

    def on_unmount(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
