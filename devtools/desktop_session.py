"""A real desktop session for the desktop tier, run as an ordinary user:
a private session bus, headless sway (pixman renderer, no input devices),
waybar with its tray and mako, each a process of that user.

sway refuses to run as root, and the tray must never be root: the test
process (root, for the simulation's loop devices) starts everything here with
the user's uid and a runtime directory of the user's own.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devtools.slowness import scaled

REPO = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, BAR = 640, 480, 30

SESSION_BUS = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <!-- The person and the test (root) that reads what the person's bus shows. -->
  <policy context="default">
    <allow user="{user}"/>
    <allow user="root"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def bus_daemon(config: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A dbus-daemon of ``config`` started here: its address, and the
    process (the caller stops it: unit tests that stop it on purpose too)."""
    read, write = os.pipe()
    daemon = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={config}",
                               f"--print-address={write}"], pass_fds=(write,),
                              stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as printed:
        return printed.readline().strip(), daemon


WAYBAR_CONFIG = {"layer": "top", "position": "top", "height": BAR, "modules-right": ["tray"],
                 "tray": {"icon-size": 22, "spacing": 4}}
# One flat colour behind the tray, so the icon's pixels are the only others there.
WAYBAR_STYLE = "* { font-size: 12px; } window#waybar { background: #101010; }"
SWAY_CONFIG = f"output HEADLESS-1 resolution {WIDTH}x{HEIGHT}\n"


class DesktopSession:
    def __init__(self, workdir: Path, user: str = "nobody") -> None:
        self.workdir = workdir
        self.user = pwd.getpwnam(user)
        self.runtime = workdir / "runtime"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.bus_address = f"unix:path={self.runtime / 'bus'}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.runtime),
            "USER": self.user.pw_name, "XDG_RUNTIME_DIR": str(self.runtime),
            "XDG_STATE_HOME": str(self.runtime / "state"),
            "XDG_CONFIG_HOME": str(self.runtime / "config"), "WAYLAND_DISPLAY": "wayland-1",
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address, "LANG": "C.UTF-8",
            "WLR_BACKENDS": "headless", "WLR_RENDERER": "pixman",
            "WLR_LIBINPUT_NO_DEVICES": "1", "NO_AT_BRIDGE": "1",
        }

    def _write(self, name: str, text: str) -> Path:
        path = self.runtime / name
        path.write_text(text)
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def configure(self, name: str, text: str) -> Path:
        """A file of the user's configuration (``$XDG_CONFIG_HOME/NAME``), the user's own."""
        path = self.runtime / "config" / name
        for directory in reversed([p for p in path.parents if p.is_relative_to(self.runtime)
                                   and p != self.runtime]):
            directory.mkdir(exist_ok=True)
            os.chown(directory, self.user.pw_uid, self.user.pw_gid)
        path.write_text(text)
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a process as the session's user; its output goes to NAME.log."""
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, env={**self.env, **(env or {})}, cwd=cwd or self.runtime,
                                    user=self.user.pw_uid, group=self.user.pw_gid,
                                    extra_groups=[], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log)
        self.procs[name] = proc
        return proc

    def run(self, argv: list[str], timeout: float = 20,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=self.env, cwd=cwd or self.runtime, user=self.user.pw_uid,
                              group=self.user.pw_gid, extra_groups=[], capture_output=True,
                              text=True, timeout=scaled(timeout), check=False)

    def prepare(self) -> DesktopSession:
        """The user's runtime directory only (enough for a headless browser)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(mode=0o700)
        os.chown(self.runtime, self.user.pw_uid, self.user.pw_gid)
        return self

    def start(self) -> DesktopSession:
        self.prepare()
        config = self._write("session-bus.conf", SESSION_BUS.format(
            socket=self.runtime / "bus", user=self.user.pw_name))
        self.spawn("dbus", ["dbus-daemon", "--nofork", f"--config-file={config}"])
        self.wait_for(lambda: (self.runtime / "bus").exists(), "the session bus")
        self.spawn("sway", ["sway", "-c", str(self._write("sway.conf", SWAY_CONFIG))])
        self.wait_for(lambda: (self.runtime / "wayland-1").exists(), "sway")
        self._write("waybar.css", WAYBAR_STYLE)
        self.start_waybar()
        self.spawn("mako", ["mako", "--default-timeout", "0"])
        self.wait_for(lambda: self.has_owner("org.freedesktop.Notifications"), "mako")
        return self

    def start_waybar(self, name: str = "waybar", position: str = "top") -> None:
        """A bar with the tray (a tray host; the first also owns the watcher)."""
        config = self._write(f"{name}.json", json.dumps({**WAYBAR_CONFIG, "position": position}))
        self.spawn(name, ["waybar", "-c", str(config), "-s", str(self.runtime / "waybar.css")])
        self.wait_for(lambda: self.has_owner("org.kde.StatusNotifierWatcher"), "waybar's watcher")

    def stop_process(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def click(self, x: int, y: int, button: str = "left") -> None:
        """A real pointer click (a virtual pointer device: devtools/virtual_pointer.py)."""
        done = self.run([sys.executable, "-m", "devtools.virtual_pointer", str(x), str(y),
                         str(WIDTH), str(HEIGHT), button], cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"the virtual pointer failed: {done.stderr[-500:]}")

    def start_tray(self, system_bus: str,
                   env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.spawn("tray", [sys.executable, "-m", "anklume_desktop.tray",
                                   "--bus", system_bus], env=env, cwd=REPO)

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop_process(name)
        shutil.rmtree(self.runtime, ignore_errors=True)

    # -- looking at it ------------------------------------------------------
    def has_owner(self, name: str) -> bool:
        done = self.run(["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
                         "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
                         f"string:{name}"])
        return "boolean true" in done.stdout

    def screenshot(self) -> tuple[int, int, bytes]:
        """The whole output as (width, height, RGB bytes), by grim (screencopy)."""
        done = subprocess.run(["grim", "-t", "ppm", "-"], env=self.env, user=self.user.pw_uid,
                              group=self.user.pw_gid, extra_groups=[], capture_output=True,
                              timeout=scaled(20), check=True)
        magic, size, _maxval, pixels = done.stdout.split(b"\n", 3)
        assert magic == b"P6", magic
        width, height = (int(n) for n in size.split())
        return width, height, pixels

    def bar_pixels(self, rgb: tuple[int, int, int], position: str = "top") -> int:
        """How many pixels of the bar (at the top or the bottom) have this colour."""
        width, height, pixels = self.screenshot()
        first = 0 if position == "top" else height - BAR
        wanted = bytes(rgb)
        return sum(1 for i in range(first * width * 3, (first + BAR) * width * 3, 3)
                   if pixels[i:i + 3] == wanted)

    def menu_rows(self) -> list[tuple[int, int]]:
        """Where each entry of an open popup menu is (x, y of its label's middle),
        top to bottom; [] when no menu is open. A menu is GTK's white box; each
        label is a band of rows with dark (text) pixels in it."""
        width, _height, pixels = self.screenshot()

        def rgb(x: int, y: int) -> bytes:
            i = (y * width + x) * 3
            return pixels[i:i + 3]
        white = [(i // 3 % width, i // 3 // width) for i in range(0, len(pixels), 3)
                 if pixels[i:i + 3] == b"\xff\xff\xff"]
        if len(white) < 1000:
            return []
        left, right = min(x for x, _ in white), max(x for x, _ in white)
        top, bottom = min(y for _, y in white), max(y for _, y in white)
        inked = [y for y in range(top, bottom + 1)
                 if any(sum(rgb(x, y)) < 600 for x in range(left + 4, right - 4))]
        bands: list[list[int]] = []
        for y in inked:
            if bands and y == bands[-1][-1] + 1:
                bands[-1].append(y)
            else:
                bands.append([y])
        return [((left + right) // 2, (band[0] + band[-1]) // 2) for band in bands]

    def wait_for(self, check: object, what: str, timeout: float = 30) -> None:
        assert callable(check)
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                logs = {p.name: p.read_text(errors="replace")[-800:]
                        for p in self.workdir.glob("*.log")}
                raise TimeoutError(f"{what} did not come in {timeout} s: {logs}")
            time.sleep(0.05)
