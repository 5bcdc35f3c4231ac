"""``anklume-guide``: the welcome guide in this terminal, or (``--web``) in the
browser behind the web guard. ``--first-login`` (the session's autostart) opens
it only until the data disk is set up or the person dismissed it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import webbrowser
from pathlib import Path

from anklume_desktop.daemon import Daemon, DaemonError, DataState
from anklume_desktop.guide import first_login


async def _data_state(address: str | None) -> DataState:
    try:
        daemon = await Daemon.connect(address)
        try:
            return (await daemon.data_disk()).state
        finally:
            await daemon.close()
    except DaemonError:
        return DataState.UNKNOWN


# The image ships no browser (docs/desktop.md, "The web mode on the image").
NO_BROWSER = ("anklume-guide: no web browser was found on this system: open the link in one "
              "on this machine, or run 'anklume-guide' in a terminal")


def _serve_web(open_browser: bool, opening: str) -> int:
    try:
        from anklume_desktop.web_guard import (
            Guard,
            GuardedServer,
            guide_command,
            launcher_page,
            serve_until_stopped,
        )
    except ImportError as e:  # the image: Debian 13 packages no textual-serve
        print(f"anklume-guide: the web mode needs {e.name or 'textual-serve'}, which is not "
              "installed; 'anklume-guide' opens the guide in this terminal", file=sys.stderr)
        return 1

    server = GuardedServer(guide_command(opening), Guard(port=0))
    server.initialize_logging()

    pages: list[Path] = []

    def opened(url: str) -> None:
        # The token is spent by the first visit: printing it is for this person only.
        print(f"The guide is at {url}  (this link works once; Ctrl-C stops)", flush=True)
        if open_browser:  # the token through a private page, never on a command line
            pages.append(launcher_page(url))
            if not webbrowser.open(pages[-1].as_uri()):
                print(NO_BROWSER, file=sys.stderr, flush=True)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_until_stopped(server, opened))
    finally:
        for page in pages:
            page.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anklume-guide", description=__doc__)
    parser.add_argument("--web", action="store_true", help="in the browser (127.0.0.1 only)")
    parser.add_argument("--no-browser", action="store_true",
                        help="with --web: print the link, do not open a browser")
    parser.add_argument("--first-login", action="store_true",
                        help="open only if the data disk is not set up and not dismissed")
    parser.add_argument("--check", action="store_true",
                        help="with --first-login: open nothing, exit 0 if it would open, "
                             "1 if not (for a session script: ... && foot anklume-guide)")
    parser.add_argument("--open", choices=("setup", "mount", "tour", "shortcuts"),
                        default="", help="open this screen over the welcome screen")
    parser.add_argument("--bus", help="the system bus's address (tests)")
    args = parser.parse_args(argv)
    address = args.bus or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    if args.first_login:
        opens = first_login.opens_at_login(first_login.state_dir(),
                                           asyncio.run(_data_state(address)))
        if args.check:
            return 0 if opens else 1
        if not opens:
            return 0
    if args.web:
        return _serve_web(not args.no_browser, args.open)
    from anklume_desktop.guide.app import GuideApp

    GuideApp(address, opening=args.open).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
