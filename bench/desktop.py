"""Benchmarks of the desktop clients (prints figures; not a test).

  .venv/bin/python -m bench.desktop [--runs 3]

Memory, as RSS once settled (VmRSS of /proc), each next to a reference run in
the same script so the ratio holds from one machine to the next:
- the tray applet, connected to a private session bus (no watcher: the same
  objects, no bar needed) and trying the system bus, against the reference of a
  bare interpreter that imports dbus-fast and connects to the same bus;
- one guide session (the process textual-serve starts for a browser, driven
  over its websocket at 100x30), against the reference of a bare textual app.
Time: tray start to its item owned on the session bus (median of N runs).
With ``--session`` (root: the simulation's loop devices; the session runs as
nobody): in headless sway with waybar, login (the session's bus, sway, waybar
and mako started, then the tray) to the tray icon on a screenshot, against
the same desktop without the tray; tray start to its icon on a screenshot
and mark-good to the new icon on a screenshot, each against the reference of
one grim screenshot (the granularity of the measure).
Issue 15's prototypes measured about 26 MB (tray) and 35 MB (guide session).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from anklume_desktop.web_guard import COOKIE, Guard, GuardedServer, guide_command, start

REFERENCE_DBUS = ("import asyncio\nfrom dbus_fast.aio import MessageBus\n"
                  "async def main():\n    await MessageBus().connect()\n"
                  "    await asyncio.sleep(3600)\nasyncio.run(main())\n")
REFERENCE_TEXTUAL = ("from textual.app import App\nfrom textual.widgets import Static\n"
                     "class A(App[None]):\n    def compose(self):\n        yield Static('x')\n"
                     "A().run()\n")
SETTLE = 2.0
# The tray refuses root: as root, the session's processes run as nobody.
USER: dict[str, object] = (
    {"user": "nobody", "group": "nogroup", "extra_groups": []} if os.geteuid() == 0 else {})


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def owned(address: str, name: str) -> bool:
    done = subprocess.run(["dbus-send", f"--bus={address}", "--print-reply",
                           "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                           "org.freedesktop.DBus.NameHasOwner", f"string:{name}"],
                          capture_output=True, text=True, check=False,
                          **USER)  # type: ignore[call-overload]
    return "boolean true" in done.stdout


def tray_run(address: str) -> tuple[float, float]:
    """(seconds to the item's name, RSS MiB once settled)."""
    env = {"DBUS_SESSION_BUS_ADDRESS": address, "PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
           "XDG_STATE_HOME": "/nonexistent"}  # the tray writes there only to announce
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "anklume_desktop.tray",
                             "--bus", "unix:path=/nonexistent"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            **USER)  # type: ignore[call-overload]
    try:
        while not owned(address, f"org.kde.StatusNotifierItem-{proc.pid}-1"):
            if proc.poll() is not None or time.monotonic() - started > 30:
                proc.kill()
                raise RuntimeError(f"the tray did not own its name: {proc.communicate()[1][-500:]}")
            time.sleep(0.01)
        took = time.monotonic() - started
        time.sleep(SETTLE)
        return took, rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def reference_rss(argv: list[str], env: dict[str, str] | None = None) -> float:
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **USER)  # type: ignore[call-overload]
    try:
        time.sleep(SETTLE)
        return rss_mib(proc.pid)
    finally:
        proc.kill()
        proc.wait()


async def session_rss(command: str) -> float:
    """RSS of the process a guarded server starts for one websocket session."""
    server = GuardedServer(command, Guard(port=0))
    runner = await start(server)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            async with http.get(server.guard.first_url, allow_redirects=False) as resp:
                cookie = resp.cookies[COOKIE].value
            headers = {"Cookie": f"{COOKIE}={cookie}", "Origin": server.guard.origin}
            before = _children()
            async with http.ws_connect(f"{server.guard.origin}/ws?width=100&height=30",
                                       headers=headers):
                await asyncio.sleep(SETTLE * 2)
                new = [pid for pid in _children() - before if _is_python(pid)]
                rss = max(rss_mib(pid) for pid in new)
            await asyncio.sleep(1)  # the session's process quits before the loop closes
            return rss
    finally:
        await runner.cleanup()


def _children() -> set[int]:
    import os

    me = str(os.getpid())
    found: set[int] = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        parent = next((ln.split()[1] for ln in text.splitlines() if ln.startswith("PPid:")), "")
        pid = int(status.parent.name)
        if parent == me or parent in {str(p) for p in found}:
            found.add(pid)
    return found


def _is_python(pid: int) -> bool:
    try:
        return "python" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False


def session_times() -> None:
    from anklume_desktop.tray.view import COLOURS, Look
    from devtools.desktop_session import DesktopSession
    from devtools.simulate import Simulation

    def rgb(look: Look) -> tuple[int, int, int]:
        return COLOURS[look][1], COLOURS[look][2], COLOURS[look][3]

    sim = Simulation(Path(tempfile.mkdtemp(prefix="anklume-bench-sim-")))
    workdir = Path(tempfile.mkdtemp(prefix="anklume-bench-desktop-"))
    workdir.chmod(0o755)
    session = DesktopSession(workdir)
    try:
        sim.start()
        login = time.monotonic()
        session.start()  # the session bus, sway, waybar, mako, each waited for
        desktop = time.monotonic() - login
        started = time.monotonic()
        session.start_tray(sim.bus.address)  # as sway's config starts it
        session.wait_for(lambda: session.bar_pixels(rgb(Look.PENDING)) > 100, "the icon", 60)
        to_icon = time.monotonic() - started
        from_login = time.monotonic() - login
        started = time.monotonic()
        session.screenshot()
        shot = time.monotonic() - started
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "anklumectl", "mark-good"], env=sim.env,
                       check=True, capture_output=True)
        session.wait_for(lambda: session.bar_pixels(rgb(Look.GOOD)) > 100, "the new icon", 60)
        to_change = time.monotonic() - started
    finally:
        session.stop()
        sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(sim.workdir, ignore_errors=True)
    print(f"session: login (session bus, sway, waybar, mako, then the tray) to the tray icon "
          f"on screen {from_login:.2f} s, of which the desktop without the tray "
          f"{desktop:.2f} s ({from_login / desktop:.2f}x the desktop alone)")
    print(f"session: one grim screenshot {shot:.2f} s (reference); tray start to its icon on "
          f"screen {to_icon:.2f} s ({to_icon / shot:.1f}x); mark-good to the new icon "
          f"{to_change:.2f} s ({to_change / shot:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--session", action="store_true",
                        help="also time the icon in headless sway (root)")
    args = parser.parse_args()
    if args.session:
        session_times()
    with tempfile.TemporaryDirectory() as tmp:
        if USER:
            nobody = pwd.getpwnam("nobody")
            os.chown(tmp, nobody.pw_uid, nobody.pw_gid)
        bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1",
                                f"--address=unix:path={tmp}/bus"], stdout=subprocess.PIPE,
                               text=True, **USER)  # type: ignore[call-overload]
        assert bus.stdout is not None
        address = bus.stdout.readline().strip()
        try:
            runs = [tray_run(address) for _ in range(args.runs)]
            reference = reference_rss([sys.executable, "-c", REFERENCE_DBUS],
                                      {"DBUS_SESSION_BUS_ADDRESS": address, "HOME": "/"})
        finally:
            bus.terminate()
            bus.wait()
    tray = statistics.median(r for _, r in runs)
    took = statistics.median(t for t, _ in runs)
    print(f"tray: start to its item on the bus, median {took:.2f} s")
    print(f"tray: RSS {tray:.1f} MiB; reference (bare dbus-fast client) {reference:.1f} MiB; "
          f"ratio {tray / reference:.2f}")
    guide = asyncio.run(session_rss(guide_command()))
    bare = asyncio.run(session_rss(shlex.join([sys.executable, "-c", REFERENCE_TEXTUAL])))
    print(f"guide session: RSS {guide:.1f} MiB; reference (bare textual app, same server) "
          f"{bare:.1f} MiB; ratio {guide / bare:.2f}")


if __name__ == "__main__":
    main()
