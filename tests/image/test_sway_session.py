"""The built sway image booted to graphical.target, as a person's first boot
(nobody at the keyboard, no data disk set up, from the menu's "run from the
stick" entry: the copy to RAM is test_boot_image.py's subject), and judged by
the session it starts: greetd logs the live user in on seat0, sway runs
with the image's configuration, waybar's StatusNotifierWatcher lists the
tray applet's item, mako owns the notifications' name, the guide runs in
foot; the display (a QMP screendump the guest asks for) shows the item's
icon in its colour; and the session's polkit agent (lxpolkit) shows its
window when an administrator's action is asked from the session, and the
window goes when closed.

The guest's tests/image/session_check.py gathers it all (one JSON object in
the report); the journal of greetd and the session comes with it for a
person reading a failure. One boot for every test here.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anklume_desktop.tray.view import COLOURS, Look
from devtools.image_vm import Boot, Machine
from tests.image.conftest import Built
from tests.image.test_boot_image import DATA_MIB, STICK_ENTRY_A, reported

pytestmark = pytest.mark.image
ROOT = Path(__file__).resolve().parents[2]
MACHINES = Path("/var/tmp/anklume-image-session")
SESSION_CHECK = Path(__file__).with_name("session_check.py")
BOOT_WAIT = 300.0  # guest seconds to a settled boot, quiet machine (scaled by the harness)
# Guest seconds from boot-complete to the tray's item and the guide, quiet
# machine (both were there by boot-complete, quiet and at twice the load):
# scaled in the guest by the host's factor.
SESSION_WAIT = 120.0
BAR_HEIGHT = 30  # desktop/waybar/config.jsonc


def boot_to_the_session(machine: Machine, boot_wait: float, session_wait: float) -> Boot:
    """One boot to graphical.target with the session check run in it
    (tests/image/session_check.py; the test_desktops_session.py tier too)."""
    return machine.boot(
        commands={"session": ["python3", "-c", SESSION_CHECK.read_text(), f"{session_wait:.0f}"]},
        target="graphical.target", screendumps=True, wait=boot_wait,
        timeout=boot_wait * 3 + session_wait * 2,
        # Nothing after the report is judged: no clean poweroff to wait for.
        cut_after_report=True)


def session_facts(boot: Boot, session_wait: float, desktop: str = "sway") -> dict[str, Any]:
    """What the session check found, kept beside the boot for a person."""
    result = reported(boot)["commands"]["session"]
    assert result["rc"] == 0, result
    facts: dict[str, Any] = json.loads(result["stdout"])
    # For a person: what the guest saw, and how long the boot took on the host.
    (boot.rundir / "session.json").write_text(json.dumps({**facts, "seconds": boot.seconds},
                                                         indent=1))
    assert facts["ready"], (f"{desktop}: no tray item and guide within {session_wait:.0f} s "
                            f"(scaled); journal:\n" + "\n".join(facts["journal"][-80:]))
    return facts


@pytest.fixture(scope="module")
def boot(built: Built) -> Iterator[Boot]:
    shutil.rmtree(MACHINES, ignore_errors=True)
    machine = Machine(built.image, MACHINES / "machine", data_mib=DATA_MIB)
    machine.choose_entry_once(STICK_ENTRY_A)
    yield boot_to_the_session(machine, BOOT_WAIT, SESSION_WAIT)


@pytest.fixture(scope="module")
def session(boot: Boot) -> dict[str, Any]:
    return session_facts(boot, SESSION_WAIT)


def test_greetd_logs_the_live_user_in_on_seat0_in_an_active_wayland_session(
        session: dict[str, Any]) -> None:
    for when in ("logind", "logind_after"):  # and still there after the checks
        logind = session[when]
        assert logind is not None, session["journal"][-80:]
        assert (logind["Name"], logind["Seat"], logind["Active"], logind["Type"],
                logind["Class"], logind["Service"]) == \
            ("anklume", "seat0", "yes", "wayland", "user", "greetd"), logind
    assert session["vt"] == "tty7"  # greetd's VT (desktop/greetd/config.toml)


def test_sway_runs_with_the_images_configuration(session: dict[str, Any]) -> None:
    assert session["processes"]["sway"], session["processes"]
    assert session["sway_config"]["config"] == (ROOT / "desktop/sway/config").read_text()
    assert [o["name"] for o in session["outputs"] if o["active"]], session["outputs"]


def test_waybar_lists_the_tray_item_and_mako_owns_the_notifications(
        session: dict[str, Any]) -> None:
    names = session["bus_names"]
    assert names.get("org.kde.StatusNotifierWatcher") == "waybar", names
    assert names.get("org.freedesktop.Notifications") == "mako", names
    items = [i for i in session["items"] if i.startswith("org.kde.StatusNotifierItem-")]
    assert len(items) == 1, session["items"]
    assert items[0].partition("/")[0] in names
    assert session["processes"]["anklume-tray"], session["processes"]
    icon = session["icon"][items[0]]
    assert icon.startswith("anklume-live-"), icon


def test_the_guide_opens_in_foot_at_the_first_login(session: dict[str, Any]) -> None:
    # No data disk set up on this machine: the guide opens (desktop/sway/anklume.conf).
    assert session["processes"]["anklume-guide"], session["processes"]
    assert any(w["app_id"] == "foot" for w in session["windows"]), session["windows"]


def ppm(path: Path) -> tuple[int, int, bytes]:
    """A binary PPM (QEMU's screendump) as width, height, RGB bytes."""
    data = path.read_bytes()
    magic, size, maxval, pixels = data.split(b"\n", 3)
    assert magic == b"P6" and maxval == b"255", (magic, maxval)
    width, height = (int(n) for n in size.split())
    assert len(pixels) == width * height * 3
    return width, height, pixels


def colour_count(path: Path, rgb: tuple[int, int, int], rows: range | None = None) -> int:
    """How many pixels of these rows (all by default) have this colour."""
    width, height, pixels = ppm(path)
    rows = rows or range(height)
    wanted = bytes(rgb)
    return sum(1 for i in range(rows.start * width * 3, rows.stop * width * 3, 3)
               if pixels[i:i + 3] == wanted)


def commonest_colours(path: Path, rows: range) -> list[tuple[bytes, int]]:
    """For a person reading a failure: what these rows show instead."""
    width, _height, pixels = ppm(path)
    return Counter(pixels[i:i + 3] for i in range(rows.start * width * 3, rows.stop * width * 3,
                                                  3)).most_common(6)


SHOTS = ("session", "session_late")  # tests/image/session_check.py: as settled, and later


def assert_icon_on_screen(boot: Boot, session: dict[str, Any], rows: range | None) -> None:
    """The icon's pixmap drawn in its look's colour, which nothing else on the
    screen has, on the screendump taken as the session settled or on the
    later one (a bar or a panel draws some seconds after the item registered,
    under TCG)."""
    seen: dict[str, object] = {}
    for shot in SHOTS:
        dump = boot.rundir / f"{shot}.ppm"
        error = boot.rundir / f"{shot}.error"
        if not dump.exists():
            seen[shot] = error.read_text() if error.exists() else "no screendump"
            continue
        icon = next(iter(session["icon_late" if shot == "session_late" else "icon"].values()))
        _a, r, g, b = COLOURS[Look(icon.removeprefix("anklume-live-"))]
        pixels = colour_count(dump, (r, g, b), rows)
        # A 22-pixel disc is about 300 pixels; part of it is enough (scaling, edges).
        if pixels > 100:
            return
        seen[shot] = {"icon": icon, "pixels": pixels,
                      "commonest": commonest_colours(dump, rows or range(BAR_HEIGHT))}
    raise AssertionError(f"the tray's icon is on no screendump: {seen}")


def test_the_display_shows_the_tray_icon_in_its_colour(boot: Boot,
                                                       session: dict[str, Any]) -> None:
    """The screen itself (QEMU's screendump of the graphics card: the image
    has no grim): the icon in waybar's top bar."""
    assert_icon_on_screen(boot, session, range(BAR_HEIGHT))


def light_pixels(path: Path, rect: dict[str, int]) -> int:
    """How many pixels inside ``rect`` (sway's layout: the output's pixels
    at scale 1) are light (a GTK dialog; the guide's terminal is dark)."""
    width, _height, pixels = ppm(path)
    return sum(1 for y in range(rect["y"], rect["y"] + rect["height"])
               for x in range(rect["x"], rect["x"] + rect["width"])
               if sum(pixels[(y * width + x) * 3:(y * width + x) * 3 + 3]) > 600)


def test_the_polkit_agent_shows_its_dialog_for_an_administrators_action(
        boot: Boot, session: dict[str, Any]) -> None:
    """timedated's set-timezone asks an administrator's password of an active
    local session: asked from inside the session, polkit hands it to the
    session's agent, whose window sway shows; closed, the request is
    cancelled (no password is typed: the image has none to type)."""
    polkit = session["polkit"]
    window = polkit["window"]
    assert window is not None, polkit
    assert window["app_id"] == "lxpolkit" and window["visible"], window
    assert polkit["closed"]["rc"] == 0 and polkit["gone"], polkit
    assert polkit["rc"] not in (None, "0"), polkit  # refused: nobody authenticated
    assert "org.freedesktop.DBus.Error" in polkit["out"] or "denied" in polkit["out"], polkit
    # On the display: the dialog's box is light where the guide's terminal
    # was dark before it came.
    area = window["rect"]["width"] * window["rect"]["height"]
    assert light_pixels(boot.rundir / "polkit.ppm", window["rect"]) > area // 2
    assert light_pixels(boot.rundir / "session.ppm", window["rect"]) < area // 10
