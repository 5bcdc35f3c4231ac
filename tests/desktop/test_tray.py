"""The tray applet in a real bar: waybar's watcher lists it, a screenshot shows
its icon, it follows the daemon, a menu click reaches the daemon, it comes back
after waybar restarts, and its notifications reach mako."""

from __future__ import annotations

import json
import subprocess
import time

from dbus_fast import Variant

from anklume_desktop.tray.sni import ITEM_IFACE, ITEM_PATH, MENU_IFACE, MENU_PATH
from anklume_desktop.tray.view import COLOURS, Look
from devtools.desktop_session import BAR, DesktopSession
from tests.desktop.conftest import session_call
from tests.service.conftest import Sim

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


def test_the_item_comes_back_after_waybar_restarts(sim: Sim, session: DesktopSession) -> None:
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon")
    session.stop_process("waybar")
    session.wait_for(lambda: not session.has_owner(WATCHER), "waybar gone")
    session.start_waybar()
    session.wait_for(lambda: any(n.startswith(item_name(session)) for n in registered(session)),
                     "the item registered with the new watcher")
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon after the restart")


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


def test_a_right_click_on_the_icon_asks_the_item_for_its_menu(
        sim: Sim, session: DesktopSession) -> None:
    # A real pointer (a virtual pointer device) on the icon: waybar's
    # libdbusmenu asks the item, with a group call, before showing the menu.
    session.start_tray(sim.bus.address)
    session.wait_for(lambda: shows(session, Look.PENDING), "the icon")
    width, _height, pixels = session.screenshot()
    wanted = bytes(rgb(Look.PENDING))
    spots = [(i // 3 % width, i // 3 // width) for i in range(0, width * BAR * 3, 3)
             if pixels[i:i + 3] == wanted]
    x, y = sum(p[0] for p in spots) // len(spots), sum(p[1] for p in spots) // len(spots)
    log = session.workdir / "monitor.log"
    with log.open("w") as out:
        monitor = subprocess.Popen(["dbus-monitor", "--address", session.bus_address,
                                    f"path={MENU_PATH}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        session.wait_for(lambda: "NameAcquired" in log.read_text(), "dbus-monitor")
        session.click(x, y, "right")
        session.wait_for(lambda: "member=AboutToShowGroup" in log.read_text(),
                         "waybar asking the menu")
    finally:
        monitor.terminate()
        monitor.wait(5)
