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
from pathlib import Path

from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, InvalidAddressError

from anklume_desktop import words
from anklume_desktop.daemon import Daemon, DaemonError
from anklume_desktop.guide.first_login import state_dir
from anklume_desktop.tray.notices import REBOOT, Memory, Notice, Notifier, notices
from anklume_desktop.tray.sni import TrayItem
from anklume_desktop.tray.view import Action, view

log = logging.getLogger("anklume-tray")
RETRY = 2.0  # seconds between attempts to reach anklumed
UPDATE_SOURCE = Path("/etc/anklume/update-source")  # one line: the bundle's URL


class Applet:
    def __init__(self, session: MessageBus, system_address: str | None, memory: Memory) -> None:
        self.system_address = system_address
        self.memory = memory
        self.daemon: Daemon | None = None
        self.item = TrayItem(session, view(None, None), self.act)
        self.notifier = Notifier(session, self.notice_action)
        self.changed = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

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
                status, data = await self.daemon.status(), await self.daemon.data_disk()
                self.item.show(view(status, data))
                for notice in self.memory.fresh(notices(status, data)):
                    await self.notifier.send(notice)
                self.changed.clear()
                await self.changed.wait()
        except DaemonError as e:
            log.info("anklumed: %s", e.message)
        finally:
            if self.daemon is not None:
                await self.daemon.close()
                self.daemon = None

    def act(self, action: Action) -> None:
        task = asyncio.get_running_loop().create_task(self.run_action(action))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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
        task = asyncio.get_running_loop().create_task(reboot())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run_action(self, action: Action) -> None:
        if action in (Action.GUIDE, Action.UNLOCK):  # a passphrase needs the guide's screen
            open_guide()
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
                                            f"Write the update's URL into {UPDATE_SOURCE}, "
                                            "or run 'anklumectl update URL'."))
            return
        await self.daemon.update(source)

    async def refused(self, what: str, error: DaemonError) -> None:
        await self.notifier.send(Notice("", f"{what} was refused" if error.code ==
                                        "not-authorized" else f"{what} failed",
                                        words.explain_error(error), critical=True))


MENU_WORDS = {Action.ROLLBACK: "The rollback", Action.LOCK: "Locking the data disk",
              Action.UPDATE: "The update"}


def update_source() -> str:
    try:
        return UPDATE_SOURCE.read_text().strip()
    except OSError:
        return ""


def open_guide() -> None:
    """In a terminal when there is one (foot on the image), else in the browser."""
    guide = [sys.executable, "-m", "anklume_desktop.guide"]
    terminal = os.environ.get("ANKLUME_TERMINAL", "foot")
    argv = [terminal, *guide] if shutil.which(terminal) else [*guide, "--web"]
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anklume-tray", description=__doc__)
    parser.add_argument("--bus", help="the system bus's address (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if os.geteuid() == 0:
        print("anklume-tray runs in a desktop session, not as root", file=sys.stderr)
        return 2

    async def run() -> None:
        session = await MessageBus().connect()
        address = args.bus or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        await Applet(session, address, Memory(state_dir())).run()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    except (OSError, InvalidAddressError, AuthError) as e:
        print(f"anklume-tray: cannot reach the session bus: {e}", file=sys.stderr)
        return 1
    return 0
