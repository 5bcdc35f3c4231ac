"""``anklumed``: the entry point systemd starts."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from anklumed import __version__, memory
from anklumed.config import load_config
from anklumed.errors import AnklumeError


def _setup_logging(level: str) -> None:
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="anklumed")
            # The journal has PRIORITY and LOGGER fields: MESSAGE is the sentence alone
            # (basicConfig would prefix "INFO:anklumed.x:").
            handler.setFormatter(logging.Formatter("%(message)s"))
        except ImportError:
            handler = logging.StreamHandler()
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("anklumed: %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # urllib3's debug lines carry whole request paths, query strings included
    # (the tokens of signed URLs): anklumed logs downloads itself.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, logging.getLogger().level))


async def _serve(config_path: Path | None, bus: str | None) -> int:
    from anklumed.core.system import LiveSystem
    from anklumed.service.app import Daemon

    core = await asyncio.to_thread(LiveSystem, load_config(config_path))
    daemon = Daemon(core, bus_address=bus)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    assert daemon.bus is not None
    disconnected = asyncio.ensure_future(
        daemon.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if disconnected.done():
        # The reason (EOFError when the bus daemon goes away) is read here:
        # left unread, asyncio would log it as a traceback at exit.
        why = disconnected.exception()
        logging.getLogger("anklumed").error("lost the bus connection (%s); exiting",
                                            type(why).__name__ if why else "closed")
        status = 1
    stopping.cancel()
    await daemon.stop()  # either way: the jobs and the disk watch end before the loop does
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anklumed", description="anklume Live daemon")
    parser.add_argument("--config", type=Path,
                        help="TOML settings (default /etc/anklume/anklumed.toml)")
    parser.add_argument("--bus", help="D-Bus address to serve on (default: the system bus)")
    parser.add_argument("--log-level", default=os.environ.get("ANKLUMED_LOG", "info"))
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    memory.limit_arenas()
    try:
        return asyncio.run(_serve(args.config, args.bus))
    except AnklumeError as e:
        logging.getLogger("anklumed").error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
