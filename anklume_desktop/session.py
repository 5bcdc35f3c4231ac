"""``anklume-session``: the desktop session greetd starts for the live user.

The image lists the desktops it has in ``/usr/share/anklume/desktops``, its
default first. The boot menu's default entry starts that one; each other
desktop has an entry of its own, which asks for it with
``anklume.desktop=NAME`` on the kernel command line. A name this image does
not have (an entry written for the other slot's image, whose desktops may
differ) starts the default, and says so.

greetd connects a session's output to its VT, where nobody reads it once
the compositor draws: a desktop that dies at start would say why to no one.
So the desktop's output goes to the journal (``journalctl -b -t sway``),
through journald's stream socket as ``systemd-cat`` would connect it.

greetd starts the session as soon as logins are allowed, which does not
wait for the graphics card: its driver is loaded while udev works through
the boot's devices, late on a busy machine. A compositor started before it
waits 10 s for a card (wlroots), then gives up, and the session is over --
what the image tier saw under load: the card came 26 s after the login, and
sway, having found none, could not take it from logind. So the session
first waits until logind says seat0 can be graphical (a DRM card on it,
seen by logind: the compositor can then take it), at most GRAPHICS_WAIT
seconds; after that the desktop starts anyway and says why it cannot.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DESKTOPS_FILE = Path("/usr/share/anklume/desktops")
CMDLINE = Path("/proc/cmdline")
JOURNAL_STREAM = Path("/run/systemd/journal/stdout")
SEAT = "seat0"  # greetd's (it sets XDG_SEAT=seat0)
GRAPHICS_WAIT = 120.0  # seconds; the card came 26 s after the login on a loaded TCG machine
GRAPHICS_POLL = 0.5
_ASKED = re.compile(r"(?:^|\s)anklume\.desktop=([a-z0-9-]+)(?=\s|$)")


@dataclass(frozen=True)
class Session:
    argv: tuple[str, ...]
    current_desktop: str  # XDG_CURRENT_DESKTOP: portals and autostart read it


SESSIONS = {
    "sway": Session(("sway",), "sway"),
    "labwc": Session(("labwc",), "labwc:wlroots"),
    "kde": Session(("startplasma-wayland",), "KDE"),
}


class SessionError(Exception):
    pass


def offered(text: str) -> list[str]:
    """The desktops file: one name a line, the default first."""
    return [name for line in text.splitlines() if (name := line.strip()) in SESSIONS]


def choose(cmdline: str, desktops: list[str]) -> tuple[str, str | None]:
    """The desktop to start and, when it is not the one asked for, why."""
    if not desktops:
        raise SessionError("this image has no desktop (built with --desktop minimal?)")
    asked = _ASKED.findall(cmdline)
    if not asked or asked[-1] == desktops[0]:
        return desktops[0], None
    if asked[-1] in desktops:
        return asked[-1], None
    return desktops[0], (f"the boot menu asked for {asked[-1]!r}, which this system does "
                         f"not have: starting {desktops[0]}")


def to_the_journal(identifier: str, fds: tuple[int, ...] = (1, 2),
                   stream: Path | None = None) -> bool:
    """Connect ``fds`` to journald's stream socket, each line an entry of
    ``identifier`` at priority info (sd_journal_stream_fd's header); False,
    and ``fds`` left as they were, when journald cannot be reached."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(stream or JOURNAL_STREAM))
        sock.shutdown(socket.SHUT_RD)
        # identifier, unit id, priority, level prefix, to syslog, kmsg, console
        sock.sendall(f"{identifier}\n\n6\n0\n0\n0\n0\n".encode())
        for fd in fds:
            os.dup2(sock.fileno(), fd)
    except OSError:
        return False
    finally:
        sock.close()
    return True


def seat_can_graphical() -> bool | None:
    """logind's CanGraphical of the seat: a graphics card is on it (None:
    logind cannot be asked)."""
    try:
        done = subprocess.run(["loginctl", "show-seat", SEAT, "--property=CanGraphical",
                               "--value"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() == "yes"


def wait_for_the_graphics(seconds: float = GRAPHICS_WAIT,
                          can_graphical: Callable[[], bool | None] = seat_can_graphical,
                          clock: Callable[[], float] = time.monotonic,
                          sleep: Callable[[float], None] = time.sleep) -> float | None:
    """Seconds waited until the seat could be graphical (0 when it could at
    once or logind cannot say); None when it still could not after ``seconds``."""
    started = clock()
    while (can := can_graphical()) is False:
        if clock() - started >= seconds:
            return None
        sleep(GRAPHICS_POLL)
    return 0.0 if can is None else clock() - started


def main() -> int:
    try:
        desktops = offered(DESKTOPS_FILE.read_text())
        name, note = choose(CMDLINE.read_text(), desktops)
    except OSError as e:
        print(f"anklume-session: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    except SessionError as e:
        print(f"anklume-session: {e}", file=sys.stderr)
        return 1
    if note:
        print(f"anklume-session: {note}", file=sys.stderr)
    session = SESSIONS[name]
    to_the_journal(name)
    waited = wait_for_the_graphics()
    if waited is None:
        print(f"anklume-session: {SEAT} has no graphics card after {GRAPHICS_WAIT:.0f} s: "
              f"starting {name} anyway", file=sys.stderr)
    elif waited > 0:
        print(f"anklume-session: waited {waited:.1f} s for the graphics card", file=sys.stderr)
    os.environ.update({"XDG_CURRENT_DESKTOP": session.current_desktop,
                       "XDG_SESSION_DESKTOP": name, "XDG_SESSION_TYPE": "wayland"})
    try:
        os.execvp(session.argv[0], list(session.argv))  # noqa: S606 (a fixed argv)
    except OSError as e:
        print(f"anklume-session: cannot start {name}: {e.strerror}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
