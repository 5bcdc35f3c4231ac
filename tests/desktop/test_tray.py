"""The tray applet in a real bar: waybar's watcher lists it, a screenshot shows
its icon, it follows the daemon, a menu click reaches the daemon, it comes back
after waybar restarts, and its notifications reach mako."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from dbus_fast import Variant

from anklume_desktop.tray.sni import ITEM_IFACE, ITEM_PATH, MENU_IFACE, MENU_PATH
from anklume_desktop.tray.view import COLOURS, REMAINING, Look
from devtools.bundle_server import Faults, serving
from devtools.desktop_session import BAR, REPO, DesktopSession
from tests.desktop.conftest import session_call
from tests.service.conftest import Sim
from tests.service.test_update import make_bundle
from tests.service.test_update_http import IMAGE_FILLER, fast_downloads

WATCHER = "org.kde.StatusNotifierWatcher"
OK_B = "STATUS=ok\nVERSION=1.1.0\nROOT_HASH=ab12\n"


def rgb(look: Look) -> tuple[int, int, int]:
    _a, r, g, b = COLOURS[look]
    return r, g, b


def registered(session: DesktopSession) -> list[str]:
    found: list[str] = session_call(session, WATCHER, "/StatusNotifierWatcher",
                                    "org.freedesktop.DBus.Properties", "Get", "ss",
                                    [WATCHER, "RegisteredStatusNotifierItems"])
    return found


def watcher_owner(session: DesktopSession) -> str:
    owner: str = session_call(session, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                              "org.freedesktop.DBus", "GetNameOwner", "s", [WATCHER])
    return owner


def item_name(session: DesktopSession) -> str:
    proc = session.procs["tray"]
    return f"org.kde.StatusNotifierItem-{proc.pid}-1"


def shows(session: DesktopSession, look: Look) -> bool:
    # A 22-pixel disc is about 300 pixels; part of it is enough (scaling, edges).
    return session.bar_pixels(rgb(look)) > 100


def tooltip(session: DesktopSession) -> str:
    _icon, _pixmaps, _title, text = session_call(
        session, item_name(session), ITEM_PATH, "org.freedesktop.DBus.Properties", "Get",
        "ss", [ITEM_IFACE, "ToolTip"])
    return str(text)


def menu_entry(session: DesktopSession, label: str) -> int:
    """The id of the menu entry with this label, as a host reads the layout."""
    _revision, layout = session_call(session, item_name(session), MENU_PATH, MENU_IFACE,
                                     "GetLayout", "iias", [0, -1, []])
    ids = {child[1]["label"]: child[0] for child in layout[2]}
    found: int = ids[label]
    return found


def click_entry(session: DesktopSession, label: str) -> None:
    """The host's libdbusmenu's call when the person clicks the entry."""
    session_call(session, item_name(session), MENU_PATH, MENU_IFACE, "Event", "isvu",
                 [menu_entry(session, label), "clicked", Variant("s", ""), 0])


def mako_notices(session: DesktopSession) -> list[dict[str, object]]:
    done = session.run(["makoctl", "list"])
    assert done.returncode == 0, done.stderr
    data: list[dict[str, object]] = json.loads(done.stdout)["data"][0]
    return data


def summaries(session: DesktopSession) -> list[str]:
    return [str(n["summary"]["data"]) for n in mako_notices(session)]  # type: ignore[index]


def test_the_tray_shows_the_state_and_follows_it(sim: Sim, session: DesktopSession) -> None:
    started = time.monotonic()
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: any(n.startswith(item_name(session)) for n in registered(session)),
                     "the item in the watcher's list")
    session.wait_for(lambda: shows(session, Look.PENDING), "the pending icon on the screen")
    print(f"tray start to its icon on the screen: {time.monotonic() - started:.2f} s")
    assert "Not confirmed yet" in tooltip(session) or "not confirmed yet" in tooltip(session)

    assert sim.ctl("mark-good").returncode == 0
    session.wait_for(lambda: shows(session, Look.GOOD), "the good icon after mark-good")
    assert not shows(session, Look.PENDING)
    assert "This boot is confirmed" in tooltip(session)


def test_a_second_tray_in_the_same_session_steps_aside(sim: Sim,
                                                       session: DesktopSession) -> None:
    # Started twice (an autostart entry and the compositor's config both):
    # one icon, one set of notifications; the second says so and exits.
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon")
    second = session.run([sys.executable, "-m", "anklume_desktop.tray", "--bus",
                          sim.bus.address], cwd=REPO)
    assert second.returncode == 0
    assert "already running in this session" in second.stderr
    assert "Traceback" not in second.stderr
    items = registered(session)
    assert len(items) == 1 and items[0].startswith(item_name(session)), items


def test_the_item_comes_back_after_waybar_restarts(sim: Sim, session: DesktopSession) -> None:
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon")
    session.stop_process("waybar")
    session.wait_for(lambda: not session.has_owner(WATCHER), "waybar gone")
    session.start_waybar()
    session.wait_for(lambda: any(n.startswith(item_name(session)) for n in registered(session)),
                     "the item registered with the new watcher")
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon after the restart")


def test_two_tray_hosts_show_it_and_the_survivor_keeps_it(
        sim: Sim, session: DesktopSession) -> None:
    # Two bars, two hosts, each with its own watcher: waybar takes the
    # watcher's name from whoever has it (and queues the first for it). The
    # item registers with the new owner, so both bars show it, and the second
    # keeps it, following the state, when the first bar goes.
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon in the first bar")
    first_owner = watcher_owner(session)
    session.start_waybar("waybar-bottom", "bottom")
    session.wait_for(lambda: watcher_owner(session) != first_owner,
                     "the second bar taking the watcher's name")
    session.wait_for(lambda: session.bar_pixels(rgb(Look.PENDING), "bottom") > 100,
                     "the icon in the second bar")
    assert shows(session, Look.PENDING)  # and still in the first
    session.stop_process("waybar")
    assert sim.ctl("mark-good").returncode == 0
    session.wait_for(lambda: session.bar_pixels(rgb(Look.GOOD), "bottom") > 100,
                     "the good icon in the surviving bar")
    assert any(n.startswith(item_name(session)) for n in registered(session))


def test_without_a_tray_host_the_notifications_still_come(
        sim: Sim, session: DesktopSession) -> None:
    # This boot is a rollback, and no bar is there: the person is told by a
    # notification; a bar that comes later shows the icon; a second login (the
    # tray started again) does not announce it again.
    sim.write_handoff(sim.handoff.read_text().replace("ROLLBACK=0", "ROLLBACK=1\nROLLBACK_FROM=B"))
    sim.restart_daemon()
    session.stop_process("waybar")
    session.wait_for(lambda: not session.has_owner(WATCHER), "no tray host")
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: "The previous system was restored" in summaries(session),
                     "the rollback's notification")
    session.start_waybar()
    session.wait_for(lambda: shows(session, Look.ROLLED_BACK), "the icon once a bar is there")
    session.stop_process("tray")
    session.start_tray(sim.bus.address)  # the next login
    session.wait_for(lambda: any(n.startswith(item_name(session)) for n in registered(session))
                     and shows(session, Look.ROLLED_BACK), "the icon of the next login")
    time.sleep(1)  # its notices went out with its first icon
    assert summaries(session).count("The previous system was restored") == 1


def test_a_menu_click_reaches_the_daemon_and_notifies(sim: Sim, session: DesktopSession) -> None:
    sim.edit_persist({"slots/B.meta": OK_B})
    sim.restart_daemon()  # B is ready: the menu offers the rollback
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon")
    revision, layout = session_call(session, item_name(session), MENU_PATH, MENU_IFACE,
                                    "GetLayout", "iias", [0, -1, []])
    entries = {child[1]["label"]: (child[0], child[1]["enabled"]) for child in layout[2]}
    rollback_id, enabled = entries["Roll back to slot B"]
    assert enabled and revision >= 1
    group = session_call(session, item_name(session), MENU_PATH, MENU_IFACE,
                         "GetGroupProperties", "aias", [[rollback_id, 99], []])
    assert group == [[rollback_id, {"label": "Roll back to slot B", "enabled": True,
                                    "visible": True}]]
    assert session_call(session, item_name(session), MENU_PATH, MENU_IFACE,
                        "AboutToShowGroup", "ai", [[0]]) == [[], []]

    sim.set_polkit("deny")
    session_call(session, item_name(session), MENU_PATH, MENU_IFACE, "Event", "isvu",
                 [rollback_id, "clicked", Variant("s", ""), 0])
    session.wait_for(lambda: "The rollback was refused" in summaries(session),
                     "the refusal's notification")
    refusal = next(n for n in mako_notices(session)
                   if n["summary"]["data"] == "The rollback was refused")  # type: ignore[index]
    assert "nothing was changed" in str(refusal["body"]["data"])  # type: ignore[index]
    assert sim.status()["PrimarySlot"] == "A"

    sim.set_polkit("allow")
    session_call(session, item_name(session), MENU_PATH, MENU_IFACE, "Event", "isvu",
                 [rollback_id, "clicked", Variant("s", ""), 0])
    session.wait_for(lambda: "Slot B boots next" in summaries(session), "the rollback's notice")
    assert sim.status()["PrimarySlot"] == "B"

    notice = next(n for n in mako_notices(session)
                  if n["summary"]["data"] == "Slot B boots next")  # type: ignore[index]
    actions = notice["actions"]["data"]  # type: ignore[index]
    assert actions == {"reboot": "Reboot now"}
    nid = str(notice["id"]["data"])  # type: ignore[index]
    assert session.run(["makoctl", "invoke", "-n", nid, "reboot"]).returncode == 0
    # No logind on the simulation's bus: the reboot fails, and the person is told.
    session.wait_for(lambda: "The reboot failed" in summaries(session), "the reboot's outcome")


def test_the_tray_says_when_anklumed_is_gone_and_reconnects(sim: Sim,
                                                            session: DesktopSession) -> None:
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon")
    assert sim.stop_daemon()
    session.wait_for(lambda: shows(session, Look.UNREACHABLE), "the unreachable icon")
    assert "not answering" in tooltip(session)
    sim.start_daemon()
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon after anklumed is back")
    sim.restart_daemon()  # a quick restart: the tray follows the new daemon
    assert sim.ctl("mark-good").returncode == 0
    session.wait_for(lambda: shows(session, Look.GOOD), "the icon after a restart and mark-good")


def icon_spot(session: DesktopSession, look: Look) -> tuple[int, int]:
    """The middle of the icon on the screen."""
    width, _height, pixels = session.screenshot()
    wanted = bytes(rgb(look))
    spots = [(i // 3 % width, i // 3 // width) for i in range(0, width * BAR * 3, 3)
             if pixels[i:i + 3] == wanted]
    return sum(p[0] for p in spots) // len(spots), sum(p[1] for p in spots) // len(spots)


def test_a_pointer_click_on_a_menu_entry_reaches_the_daemon(
        sim: Sim, session: DesktopSession) -> None:
    # A real pointer (a virtual pointer device): a right click on the icon
    # opens waybar's menu (its libdbusmenu reads the item's layout), and a left
    # click on an entry reaches the item, which calls anklumed.
    sim.edit_persist({"slots/B.meta": OK_B})
    sim.restart_daemon()  # B is ready: the menu offers the rollback
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon")
    x, y = icon_spot(session, Look.PENDING)
    session.click(x, y, "right")
    rows: list[tuple[int, int]] = []

    def menu_shown() -> bool:
        rows[:] = session.menu_rows()
        return len(rows) == 5
    session.wait_for(menu_shown, "the menu's five entries on the screen")
    labels = [entry[1]["label"] for entry in session_call(
        session, item_name(session), MENU_PATH, MENU_IFACE, "GetLayout", "iias",
        [0, -1, []])[1][2]]
    session.click(*rows[labels.index("Roll back to slot B")])
    session.wait_for(lambda: "Slot B boots next" in summaries(session), "the rollback's notice")
    assert sim.status()["PrimarySlot"] == "B"
    session.wait_for(lambda: "Slot B boots next" in tooltip(session), "the next boot's slot")
    assert session.menu_rows() == []  # the menu closed


def test_the_icon_and_unlock_open_the_guide(sim: Sim, session: DesktopSession) -> None:
    # A left click on the icon opens the welcome guide; "Unlock the data disk"
    # opens it on its mount screen (a passphrase needs the guide). The
    # terminal here records the command it was given.
    assert sim.data_disk is not None
    assert sim.ctl("data", "setup", "--disk", str(sim.data_disk), "--fs", "btrfs",
                   "--encryption", "none", "--pool-name", "vault", "--yes").returncode == 0
    assert sim.ctl("data", "lock").returncode == 0
    assert sim.ctl("mark-good").returncode == 0  # else "not confirmed" is the look
    opened = session.runtime / "guide-opened"
    terminal = session.runtime / "terminal"
    terminal.write_text(f'#!/bin/sh\necho "$*" >> {opened}\n')
    terminal.chmod(0o755)
    session.start_tray(sim.bus.address, {"ANKLUME_TERMINAL": str(terminal)})
    session.wait_for(lambda: shows(session, Look.LOCKED), "the locked icon")
    session.click(*icon_spot(session, Look.LOCKED))
    session.wait_for(opened.exists, "the guide opened by a click on the icon")
    click_entry(session, "Unlock the data disk")
    session.wait_for(lambda: len(opened.read_text().splitlines()) == 2, "the guide for unlocking")
    first, second = opened.read_text().splitlines()
    assert first.endswith("-m anklume_desktop.guide")
    assert second.endswith("-m anklume_desktop.guide --open mount")


def test_update_now_runs_the_update_and_the_icon_shows_its_progress(
        sim: Sim, session: DesktopSession, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path, filler=IMAGE_FILLER)
    fast_downloads(sim)
    # The server stalls past 5 MiB: many seconds in the writing phase, part done.
    faults = Faults(stall_at=[(5 << 20) + i for i in range(20)], stall_seconds=3)
    with serving(manifest.parent, faults) as server:
        session.start_tray(sim.bus.address)
        session.wait_for(lambda: shows(session, Look.PENDING), "the icon")
        click_entry(session, "Update now")  # no source yet: the person is told where
        session.wait_for(lambda: "No update source is configured" in summaries(session),
                         "the missing source's notification")
        # The person's own source (the image's /etc/anklume/update-source is the default).
        session.configure("anklume/update-source", f"{server.url}/{manifest.name}\n")
        click_entry(session, "Update now")
        # The icon: a disc whose done part has the updating colour, the rest
        # another; read between two equal tooltips (the progress may move).
        seen: list[int] = []

        def steady_progress() -> bool:
            before = re.search(r"Update running: writing ([1-9]\d*)%", tooltip(session))
            seen[:] = [session.bar_pixels(rgb(Look.UPDATING)),
                       session.bar_pixels(REMAINING[1:])]
            after = re.search(r"Update running: writing ([1-9]\d*)%", tooltip(session))
            if before is None or after is None or before.group(1) != after.group(1):
                return False
            seen.append(int(before.group(1)))
            return True
        session.wait_for(steady_progress, "the update's progress in the tooltip")
        done, rest, percent = seen
        assert percent < 100 and done > 0 and rest > 0
        assert abs(done / (done + rest) - percent / 100) < 0.15, (done, rest, percent)
        assert sim.ctl("cancel").returncode == 0
        session.wait_for(lambda: "The update did not finish" in summaries(session),
                         "the cancelled update's notification")
        session.wait_for(lambda: shows(session, Look.PENDING), "the icon after the update")
    assert "Update running" not in tooltip(session)
    with serving(manifest.parent) as server:  # a server that behaves: the update ends
        session.configure("anklume/update-source", f"{server.url}/{manifest.name}\n")
        click_entry(session, "Update now")
        session.wait_for(lambda: "The update is ready" in summaries(session),
                         "the finished update's notification", timeout=60)
    ready = next(n for n in mako_notices(session)
                 if n["summary"]["data"] == "The update is ready")  # type: ignore[index]
    assert ready["actions"]["data"] == {"reboot": "Reboot now"}  # type: ignore[index]
    session.wait_for(lambda: "Slot B boots next" in tooltip(session), "the new slot next")
