"""Run inside a booted desktop image by the report script (``python3 -c``,
as root): waits for the live user's desktop session, then says what it
found, as one JSON object on stdout -- logind's session, the compositor
(sway, labwc or Plasma's kwin_wayland) and, under sway, its configuration
and windows, the session bus's names (the StatusNotifierWatcher and the
notifications' owners), the tray's item, the guide and the processes it
runs under, the environment the session gave the tray; asks the host for a
screendump of the display; then, under sway, makes polkit ask the session's
agent (lxpolkit) for an administrator's password, waits for its window in
sway's tree, asks for a second screendump and closes the window. The
journal of greetd and of the session comes with it, for a person reading a
failure. Standard library only (the image is not modified for the tests),
and the report script's helpers (it runs under it).

argv: the seconds a quiet machine may take to show the session (scaled here
by ANKLUME_TEST_SLOWNESS, which the report unit passes on).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

USER = "anklume"
CONTROL = Path("/dev/virtio-ports/org.anklume.test.control")
WATCHER = "org.kde.StatusNotifierWatcher"
ITEM_IFACE = "org.kde.StatusNotifierItem"
HOST = "org.kde.StatusNotifierHost-"  # a host's bus name: its prefix
NOTIFICATIONS = "org.freedesktop.Notifications"
AGENT = "lxpolkit"
# An action whose default is an administrator's password for an active
# local session (systemd's timedated): polkit asks the session's agent.
# Cancelled here, so the time zone stays as it is.
ASK_ADMIN = ["busctl", "--allow-interactive-authorization=yes", "--timeout=120", "call",
             "org.freedesktop.timedate1", "/org/freedesktop/timedate1",
             "org.freedesktop.timedate1", "SetTimezone", "sb", "UTC", "true"]
HOST_SCREENDUMP_SECONDS = 3.0  # the host polls its control file each second
# From the item's registration to its icon on the screen: the bar asks the
# tray for its properties, then draws (seen in CI: a screendump taken as the
# item registered showed the bar without the icon, under TCG).
BAR_DRAWS_SECONDS = 5.0
# A second screendump, this long after the session settled (the first one's
# wait included): the icon is judged on either. Plasma's panel and wallpaper
# were on no screendump taken as the session settled (the desktops tier,
# 2026-12-03). The CI run of 2026-12-04 whose bar had no icon was not slow
# drawing but the tray registering before waybar's host (fixed in
# anklume_desktop/tray/sni.py): its icon was on neither screendump.
LATE_SECONDS = {"plasmashell": 35.0, "waybar": 20.0}
# Each desktop's programs (pgrep matches the first 15 characters of a name).
PROGRAMS = ("sway", "labwc", "kwin_wayland", "plasmashell", "kded6", "waybar", "mako", "foot",
            "konsole", AGENT, "anklume-tray", "anklume-guide")
# What anklume-session and the compositor put in the session's environment
# (the tray inherits it): the desktop chosen, and labwc's keyboard layouts
# from its environment file.
SESSION_ENV = ("XDG_CURRENT_DESKTOP", "XDG_SESSION_DESKTOP", "XDG_SESSION_TYPE",
               "WAYLAND_DISPLAY", "XKB_DEFAULT_LAYOUT", "XKB_DEFAULT_OPTIONS")


def report_script() -> ModuleType:
    """The report script this runs under (devtools/image_vm/report.py, a
    credential of its unit): its helpers, not copies of them."""
    path = Path(os.environ["CREDENTIALS_DIRECTORY"]) / "anklume-test.report.py"
    spec = importlib.util.spec_from_file_location("anklume_test_report", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT = report_script()
as_json = REPORT.as_json
slowness = REPORT.slowness


def run(argv: list[str], user: pwd.struct_passwd | None = None,
        env: dict[str, str] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """A command, as root or as ``user`` (its own groups, ``env`` added)."""
    popen: dict[str, Any] = {}
    if user is not None:
        popen = {"user": user.pw_uid, "group": user.pw_gid,
                 "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid),
                 "env": {"PATH": "/usr/bin:/bin", "HOME": user.pw_dir, **(env or {})}}
    result: dict[str, Any] = REPORT.run(argv, timeout=timeout * slowness(), **popen)
    return result


class Session:
    """The live user's session as root sees it, and its programs' answers."""

    def __init__(self, user: pwd.struct_passwd):
        self.user = user
        self.runtime = f"/run/user/{user.pw_uid}"

    def logind(self) -> dict[str, str]:
        """logind's record of the live user's session on a seat (its user
        manager has a session too, on none)."""
        listed = run(["loginctl", "list-sessions", "--no-legend"])["stdout"].split("\n")
        ids = [words[0] for words in map(str.split, listed)
               if len(words) >= 4 and words[2] == USER and words[3] == "seat0"]
        if not ids:
            return {"listed": "\n".join(listed)}
        out = run(["loginctl", "show-session", ids[-1]])["stdout"]
        return dict(line.partition("=")[::2] for line in out.splitlines() if line)

    def sway_socket(self) -> str | None:
        found = sorted(glob.glob(f"{self.runtime}/sway-ipc.{self.user.pw_uid}.*.sock"))
        return found[-1] if found else None

    def swaymsg(self, *args: str) -> dict[str, Any]:
        return run(["swaymsg", "-s", self.sway_socket() or "/nonexistent", *args],
                   user=self.user)

    def user_bus(self, *args: str) -> dict[str, Any]:
        return run(["busctl", "--user", "--json=short", *args], user=self.user,
                   env={"DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.runtime}/bus",
                        "XDG_RUNTIME_DIR": self.runtime})

    def items(self) -> list[str]:
        got = as_json(self.user_bus("get-property", WATCHER, "/StatusNotifierWatcher",
                                    WATCHER, "RegisteredStatusNotifierItems")) or {}
        return list(got.get("data", []))

    def item_property(self, item: str, name: str) -> Any:
        # An item is registered by its bus name (with its path, by some hosts).
        service, _, path = item.partition("/")
        got = as_json(self.user_bus("get-property", service, "/" + (path or
                                    "StatusNotifierItem"), ITEM_IFACE, name)) or {}
        return got.get("data")

    def bus_names(self) -> dict[str, str]:
        """Each name on the session bus → the process that owns it."""
        names = as_json(self.user_bus("list")) or []
        return {n["name"]: n.get("process") or "" for n in names
                if not n["name"].startswith(":")}

    def announced(self) -> list[str]:
        """The tray's memory of this boot's notices: those a notification
        daemon took (anklume_desktop/tray/notices.py)."""
        found = glob.glob(f"{self.user.pw_dir}/.local/state/anklume/announced-*")
        return sorted(Path(found[0]).read_text().split()) if found else []

    def processes(self, name: str) -> list[str]:
        found: str = run(["pgrep", "-u", str(self.user.pw_uid), "-a", name])["stdout"]
        return found.splitlines()

    def environment(self, name: str) -> dict[str, str]:
        """SESSION_ENV in the environment a process of ``name`` was started with."""
        pids = self.processes(name)
        if not pids:
            return {}
        try:
            raw = Path(f"/proc/{pids[0].split()[0]}/environ").read_bytes()
        except OSError:
            return {}
        pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0"))
        return {key: value for key, _, value in pairs if key in SESSION_ENV}

    def ancestry(self, name: str) -> list[str]:
        """The names of a process of ``name`` and of its parents up to PID 1:
        who started it (the guide's terminal, the compositor that ran the
        autostart)."""
        pids = self.processes(name)
        chain: list[str] = []
        pid = pids[0].split()[0] if pids else "0"
        while pid not in ("0", "1") and len(chain) < 20:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                break
            # pid (comm) state ppid ...: comm may hold spaces and parentheses
            chain.append(stat[stat.index("(") + 1:stat.rindex(")")])
            pid = stat[stat.rindex(")") + 2:].split()[1]
        return chain

    def windows(self) -> list[dict[str, Any]]:
        """sway's views: app_id, title, pid, whether shown."""
        tree = as_json(self.swaymsg("-t", "get_tree", "-r"))
        found: list[dict[str, Any]] = []
        stack = [tree] if tree else []
        while stack:
            node = stack.pop()
            if node.get("pid") and node.get("type") in ("con", "floating_con"):
                found.append({k: node.get(k) for k in ("app_id", "name", "pid", "visible",
                                                       "rect", "shell")})
            stack += node.get("nodes", []) + node.get("floating_nodes", [])
        return found


def wait_until(test: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds * slowness()
    while time.monotonic() < deadline:
        if test():
            return True
        time.sleep(1)
    return bool(test())


def ask_screendump(name: str) -> None:
    with CONTROL.open("w") as port:
        port.write(f"screendump {name}\n")
        port.flush()
    time.sleep(HOST_SCREENDUMP_SECONDS * slowness())


def agent_window(session: Session) -> dict[str, Any] | None:
    agents = {int(line.split()[0]) for line in session.processes(AGENT)}
    return next((w for w in session.windows()
                 if w["app_id"] == AGENT or w["pid"] in agents), None)


def polkit_dialog(session: Session) -> dict[str, Any]:
    """An administrator's action asked from inside the session (sway's exec:
    a process of the session, as a person's terminal would be), the agent's
    window seen, shown in a screendump, then closed (the request cancelled)."""
    rc_file = f"{session.runtime}/anklume-test-polkit.rc"
    # No ";": it would end sway's command.
    command = " ".join(ASK_ADMIN) + f" >{rc_file}.out 2>&1 && echo 0 >{rc_file}" \
        f" || echo $? >{rc_file}"
    asked = session.swaymsg("exec", command)
    seen = wait_until(lambda: agent_window(session) is not None, 60)
    window = agent_window(session)
    if seen:
        ask_screendump("polkit")
    closed = session.swaymsg(f"[pid={window['pid']}]", "kill") if window else None
    answered = wait_until(lambda: Path(rc_file).exists(), 30)
    return {"asked": asked, "window": window, "closed": closed,
            "gone": wait_until(lambda: agent_window(session) is None, 30),
            "rc": Path(rc_file).read_text().strip() if answered else None,
            "out": Path(rc_file + ".out").read_text() if answered else None}


def journal() -> list[str]:
    """greetd's, logind's, the live user's (its session, with the desktop's
    output, and its user manager) and the kernel's lines about the display."""
    uid = str(pwd.getpwnam(USER).pw_uid)
    out = run(["journalctl", "-b", "--no-pager", "-o", "short-monotonic",
               "_SYSTEMD_UNIT=greetd.service", "+", f"_UID={uid}", "+",
               "_SYSTEMD_UNIT=systemd-logind.service", "+", "SYSLOG_IDENTIFIER=greetd", "+",
               "_TRANSPORT=kernel"], timeout=60)
    lines: list[str] = [line for line in out["stdout"].splitlines()
                        if " kernel: " not in line or any(
                            word in line.lower() for word in ("drm", "bochs", "fb"))]
    return lines[-400:]


def settled(session: Session) -> bool:
    """The item is registered, a host is there to show it (waybar is one;
    Plasma's panel registers its own once its tray is loaded, later than the
    watcher), a notification daemon owns its name (Plasma's shell takes it
    after its panel) and the guide runs."""
    names = session.bus_names()
    return any("StatusNotifierItem" in i for i in session.items()) \
        and any(n.startswith(HOST) for n in names) and NOTIFICATIONS in names \
        and bool(session.processes("anklume-guide"))


def main() -> int:
    user = pwd.getpwnam(USER)
    session = Session(user)
    wait = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
    started = time.monotonic()
    ready = wait_until(lambda: settled(session), wait)
    settled_at = time.monotonic()
    facts: dict[str, Any] = {
        "ready": ready, "waited": settled_at - started, "uptime": time.monotonic(),
        "logind": session.logind(),
        "sway_socket": session.sway_socket(),
        "sway_version": as_json(session.swaymsg("-t", "get_version", "-r")),
        "sway_config": as_json(session.swaymsg("-t", "get_config", "-r")),
        "outputs": as_json(session.swaymsg("-t", "get_outputs", "-r")),
        "items": session.items(),
        "bus_names": session.bus_names(),
        "processes": {p: session.processes(p) for p in PROGRAMS},
        "windows": session.windows(),
        "vt": Path("/sys/class/tty/tty0/active").read_text().strip(),
        "cmdline": Path("/proc/cmdline").read_text().strip(),
        "environment": session.environment("anklume-tray"),
        "ancestry": {p: session.ancestry(p) for p in ("anklume-guide", "anklume-tray",
                                                      "waybar")},
    }
    facts["icon"] = {item: session.item_property(item, "IconName") for item in facts["items"]}
    if ready:
        time.sleep(BAR_DRAWS_SECONDS * slowness())
        ask_screendump("session")
        if facts["sway_socket"]:  # the dialog is found in sway's tree
            facts["polkit"] = polkit_dialog(session)
        late = LATE_SECONDS["plasmashell" if facts["processes"]["plasmashell"] else "waybar"]
        time.sleep(max(0.0, settled_at + late * slowness() - time.monotonic()))
        facts["icon_late"] = {item: session.item_property(item, "IconName")
                              for item in session.items()}
        ask_screendump("session_late")  # a name the host takes: an identifier
    facts["logind_after"] = session.logind()
    facts["announced"] = session.announced()
    facts["journal"] = journal()
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
