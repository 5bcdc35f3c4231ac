"""``anklume-tray``: the tray applet of a desktop session (never root).

It follows anklumed on the system bus (PropertiesChanged, and the daemon's
name coming and going), shows the state as a StatusNotifierItem, announces
what needs announcing, and turns menu clicks into calls, which polkit
authorizes through the session's agent. With no tray host it still notifies.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import webbrowser
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from dbus_fast import NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, InvalidAddressError

# The session bus is opened here, not through anklume_client's Connection: it
# needs the fixes as much (it goes away at logout).
from anklume_client import dbus_fixes
from anklume_desktop import words
from anklume_desktop.daemon import Daemon, DaemonError, DataDisk, Progress, Status
from anklume_desktop.guide.first_login import state_dir
from anklume_desktop.tray.notices import REBOOT, Memory, Notice, Notifier, notices
from anklume_desktop.tray.sni import TrayItem
from anklume_desktop.tray.view import Action, view

log = logging.getLogger("anklume-tray")
RETRY = 2.0  # seconds between attempts to reach anklumed
INSTANCE_NAME = "org.anklume.Tray"  # owned by the session's one tray
# Where "Update now" finds the bundle's URL (one line): the person's own file,
# else the image's (the distributor's channel).
SYSTEM_UPDATE_SOURCE = Path("/etc/anklume/update-source")


class Applet:
    def __init__(self, session: MessageBus, system_address: str | None, memory: Memory) -> None:
        self.system_address = system_address
        self.memory = memory
        self.daemon: Daemon | None = None
        self.item = TrayItem(session, view(None, None), self.act)
        self.changed = asyncio.Event()
        # A notification daemon coming wakes the loop: it sends what it could not.
        self.notifier = Notifier(session, self.notice_action, self.changed.set)
        self.tasks: set[asyncio.Task[None]] = set()
        self.shown: tuple[Status, DataDisk] | None = None
        self.progress: Progress | None = None
        self.following = ""  # the update job whose progress the icon shows

    async def run(self) -> None:
        await self.item.start()
        await self.notifier.start()
        while True:
            await self.follow_daemon()
            self.item.show(view(None, None))
            await asyncio.sleep(RETRY)

    async def follow_daemon(self) -> None:
        """Until anklumed goes away (or cannot be reached)."""
        try:
            self.daemon = await Daemon.connect(self.system_address)
            await self.daemon.watch(self.changed.set)
            while True:
                # Cleared before the reads: a change signalled while they (or a
                # notification) are awaited must wake the next round, not be lost.
                self.changed.clear()
                status, data = await self.daemon.status(), await self.daemon.data_disk()
                self.shown = status, data
                if status.update_running and status.last_update_job != self.following:
                    self.follow_update(status.last_update_job)
                self.render()
                for notice in self.memory.fresh(notices(status, data)):
                    if await self.notifier.send(notice):
                        self.memory.announced(notice)
                await self.changed.wait()
        except DaemonError as e:
            log.info("anklumed: %s", e.message)
        finally:
            self.shown, self.progress, self.following = None, None, ""
            if self.daemon is not None:
                await self.daemon.close()
                self.daemon = None

    def render(self) -> None:
        status, data = self.shown or (None, None)
        self.item.show(view(status, data, self.progress))

    def follow_update(self, job: str) -> None:
        """The job's progress, by its signals, on the icon and in the tooltip."""
        assert self.daemon is not None
        daemon, self.following, self.progress = self.daemon, job, None

        def progressed(progress: Progress) -> None:
            if self.following == job:
                self.progress = progress
                self.render()

        async def follow() -> None:
            try:
                await daemon.follow(job, progressed)
            except DaemonError as e:  # the daemon went: follow_daemon sees it too
                log.info("update %s: %s", job, e.message)
            if self.following == job:
                # Followed no more: a restarted anklumed numbers its jobs from
                # 1 again, and its update under this path must be followed too.
                self.progress, self.following = None, ""
        self.spawn(follow(), f"following update {job}")

    def spawn(self, work: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, what))

    def _done(self, task: asyncio.Task[None], what: str) -> None:
        """An error the work did not expect (the session bus gone as the
        session ends) is one line, not an unread task's traceback."""
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.info("%s failed unexpectedly (%s: %s)", what, type(error).__name__, error)

    def act(self, action: Action) -> None:
        self.spawn(self.run_action(action), f"the {action.value}")

    def notice_action(self, action: str) -> None:
        if action == REBOOT:
            self.act_reboot()

    def act_reboot(self) -> None:
        async def reboot() -> None:
            try:
                if self.daemon is not None:
                    await self.daemon.reboot()
            except DaemonError as e:
                await self.refused("The reboot", e)
        self.spawn(reboot(), "the reboot")

    async def run_action(self, action: Action) -> None:
        if action in (Action.GUIDE, Action.UNLOCK):  # a passphrase needs the guide's screen
            if not open_guide("mount" if action == Action.UNLOCK else ""):
                await self.notifier.send(Notice(
                    "", "The welcome guide cannot open here",
                    "This system has no terminal (foot, konsole) and no web browser: run "
                    "'anklume-guide' on a text console (Ctrl+Alt+F2).", critical=True))
            return
        if self.daemon is None:
            await self.notifier.send(Notice("", "anklumed is not answering",
                                            words.advice("unreachable")))
            return
        try:
            if action == Action.ROLLBACK:
                slot = await self.daemon.rollback()
                await self.notifier.send(Notice("", f"Slot {slot} boots next",
                                                "Reboot to use it.",
                                                actions=((REBOOT, "Reboot now"),)))
            elif action == Action.LOCK:
                await self.daemon.lock()
            elif action == Action.UPDATE:
                await self.update()
        except DaemonError as e:
            await self.refused(MENU_WORDS[action], e)

    async def update(self) -> None:
        assert self.daemon is not None
        source = update_source()
        if not source:
            await self.notifier.send(Notice("", "No update source is configured",
                                            f"Write the update's URL into {user_update_source()}"
                                            ", or run 'anklumectl update URL'."))
            return
        await self.daemon.update(source)

    async def refused(self, what: str, error: DaemonError) -> None:
        await self.notifier.send(Notice("", f"{what} was refused" if error.code ==
                                        "not-authorized" else f"{what} failed",
                                        words.explain_error(error), critical=True))


MENU_WORDS = {Action.ROLLBACK: "The rollback", Action.LOCK: "Locking the data disk",
              Action.UPDATE: "The update"}


def user_update_source() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "anklume" / "update-source"


def update_source() -> str:
    """The first line of the person's file, else of the image's; "" when none."""
    for path in (user_update_source(), SYSTEM_UPDATE_SOURCE):
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        if lines and lines[0].strip():
            return lines[0].strip()
    return ""


# The terminals the guide opens in, the first one installed: foot (sway,
# labwc), konsole (KDE, which has no foot). ANKLUME_TERMINAL names another,
# tried first.
TERMINALS: tuple[tuple[str, ...], ...] = (("foot",), ("konsole", "-e"))


def has_browser() -> bool:
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return True


def guide_command(opening: str = "", which: Callable[[str], str | None] = shutil.which,
                  browser: Callable[[], bool] = has_browser) -> list[str] | None:
    """How the guide opens: in a terminal when there is one, else in the
    browser (its web mode); None when this system has neither (the image
    ships no browser: docs/desktop.md). ``opening``: the guide's screen to
    open (``mount`` to unlock)."""
    guide = [sys.executable, "-m", "anklume_desktop.guide",
             *(["--open", opening] if opening else [])]
    chosen = os.environ.get("ANKLUME_TERMINAL")
    terminals: tuple[tuple[str, ...], ...] = ((chosen,), *TERMINALS) if chosen else TERMINALS
    for terminal in terminals:
        if which(terminal[0]):
            return [*terminal, *guide]
    return [*guide, "--web"] if browser() else None


def open_guide(opening: str = "") -> bool:
    """Opens the guide; False when there is nothing to show it in."""
    argv = guide_command(opening)
    if argv is None:
        return False
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    return True


async def first_in_session(session: MessageBus) -> bool:
    """Whether this is the session's only tray: started twice (an autostart
    entry and the compositor's config), the second would show a second icon
    and announce everything twice."""
    reply = await session.request_name(INSTANCE_NAME, NameFlag.DO_NOT_QUEUE)
    return reply == RequestNameReply.PRIMARY_OWNER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anklume-tray", description=__doc__)
    parser.add_argument("--bus", help="the system bus's address (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    untested = dbus_fixes.refusal()
    if untested is not None:
        print(f"anklume-tray: {untested}", file=sys.stderr)
        return 1
    if os.geteuid() == 0:
        print("anklume-tray runs in a desktop session, not as root", file=sys.stderr)
        return 2

    async def run() -> int:
        session = await MessageBus().connect()
        if not await first_in_session(session):
            print("anklume-tray: already running in this session; this one stops",
                  file=sys.stderr)
            return 0
        address = args.bus or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        await Applet(session, address, Memory(state_dir())).run()
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    except (OSError, InvalidAddressError, AuthError) as e:
        print(f"anklume-tray: cannot reach the session bus: {e}", file=sys.stderr)
        return 1
