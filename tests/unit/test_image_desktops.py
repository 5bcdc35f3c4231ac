"""``anklume-image build --desktop``: the packages, the session files, the
login, the boot menu's desktop entries and the session each entry starts."""

from __future__ import annotations

import configparser
import ctypes
import ctypes.util
import os
import re
import socket
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

from anklume_desktop import session
from anklume_desktop.guide import keybindings
from anklume_image import esp, install, packages
from anklume_image.config import Base, BuildConfig, Desktop
from anklumed.slots import boot_entries as be
from anklumed.slots.boot_menu import BootMenu
from anklumed.stick import SlotName

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
A, B = SlotName.A, SlotName.B
UUID = "0b6e2a44-54c1-4fcb-9d87-1e2f3a4b5c6d"


def config(desktop: Desktop) -> BuildConfig:
    return BuildConfig(out=Path("/nonexistent/x.img"), desktop=desktop, zfs=False)


def test_minimal_is_the_console_alone() -> None:
    minimal = config(Desktop.MINIMAL)
    assert minimal.sessions == ()
    chosen = set(packages.debian_packages(minimal))
    assert not chosen & {"greetd", "sway", "labwc", "plasma-desktop", "python3-textual"}
    assert install.session_files(minimal) == [] and install.desktop_hooks(minimal, ROOT) == []
    assert "anklume_desktop" not in install.python_hooks(ROOT, minimal)[0]


@pytest.mark.parametrize(("desktop", "has", "lacks"), [
    (Desktop.SWAY, {"sway", "waybar", "foot", "fuzzel", "mako-notifier", "lxpolkit"},
     {"labwc", "plasma-desktop", "polkit-kde-agent-1"}),
    (Desktop.LABWC, {"labwc", "waybar", "foot", "fuzzel", "mako-notifier", "lxpolkit"},
     {"sway", "plasma-desktop", "polkit-kde-agent-1"}),
    (Desktop.KDE, {"plasma-desktop", "kwin-wayland", "konsole", "polkit-kde-agent-1"},
     {"sway", "labwc", "sddm", "lxpolkit"}),
    (Desktop.ALL, {"sway", "labwc", "plasma-desktop", "lxpolkit", "polkit-kde-agent-1"},
     {"sddm"}),
])
def test_each_desktop_chooses_its_packages_and_the_login(
        desktop: Desktop, has: set[str], lacks: set[str]) -> None:
    chosen = set(packages.debian_packages(config(desktop)))
    # greetd logs in every desktop; the tray needs a session bus, the guide textual.
    assert has | {"greetd", "login", "dbus-user-session", "python3-textual"} <= chosen
    assert not chosen & lacks


def test_all_offers_sway_first_then_labwc_and_kde() -> None:
    assert config(Desktop.ALL).sessions == (Desktop.SWAY, Desktop.LABWC, Desktop.KDE)


@pytest.mark.parametrize("desktop", [d for d in Desktop if d is not Desktop.MINIMAL])
def test_session_files_exist_and_keep_their_names(desktop: Desktop) -> None:
    """mmdebstrap's copy-in keeps a file's name: each target must be it."""
    files = install.session_files(config(desktop))
    assert files
    for source, target in files:
        assert (ROOT / source).is_file(), source
        assert Path(source).name == Path(target).name, (source, target)
        assert target.startswith(("/etc/", "/usr/share/")), target


def test_a_sway_image_gets_its_files_the_clients_the_live_user_and_the_login() -> None:
    sway = config(Desktop.SWAY)
    targets = {target for _, target in install.session_files(sway)}
    assert {"/etc/sway/config", "/etc/sway/config.d/anklume.conf",
            "/etc/xdg/waybar/config.jsonc", "/etc/greetd/config.toml",
            str(keybindings.IMAGE_PATH)} <= targets
    assert not any("labwc" in t or "autostart" in t for t in targets)
    hooks = install.desktop_hooks(sway, ROOT)
    assert f"copy-in {ROOT}/desktop/sway/config /etc/sway" in hooks
    assert f"printf %s 'sway\n' > \"$1\"{install.DESKTOPS_FILE}" in hooks
    assert any(h.startswith('chroot "$1" useradd ') and h.endswith(" anklume") for h in hooks)
    assert 'chroot "$1" systemctl set-default graphical.target' in hooks
    assert 'chroot "$1" systemctl enable greetd.service' in hooks
    python = install.python_hooks(ROOT, sway)
    assert "anklume_desktop" in python[0]
    for name in ("anklume-guide", "anklume-tray", "anklume-session"):
        assert name in SCRIPTS
        assert any(f"/usr/bin/{name} && chmod 0755" in h for h in python), name
    # The desktop hooks run inside the customize hooks, before the UKI is made.
    every = install.customize_hooks(sway, ROOT)
    assert every.index(hooks[-1]) < every.index(next(h for h in every if "ukify" in h))


def test_kde_gets_the_xdg_autostart_entries_and_all_gets_every_file_once() -> None:
    kde = {t for _, t in install.session_files(config(Desktop.KDE))}
    assert {"/etc/xdg/autostart/anklume-tray.desktop",
            "/etc/xdg/autostart/anklume-guide.desktop"} <= kde
    everything = install.session_files(config(Desktop.ALL))
    assert len(everything) == len(set(everything))
    assert {"/etc/sway/config", "/etc/xdg/labwc/rc.xml",
            "/etc/xdg/autostart/anklume-tray.desktop"} <= {t for _, t in everything}
    hooks = install.desktop_hooks(config(Desktop.ALL), ROOT)
    assert f"printf %s 'sway\nlabwc\nkde\n' > \"$1\"{install.DESKTOPS_FILE}" in hooks


def test_greetd_starts_the_live_users_session_away_from_tty1() -> None:
    greetd = tomllib.loads((ROOT / "desktop/greetd/config.toml").read_text())
    assert greetd["initial_session"] == {"command": "anklume-session",
                                         "user": install.LIVE_USER}
    # greetd's user has no /usr/sbin in its PATH: agreety by its full name.
    assert greetd["default_session"]["command"] == "/usr/sbin/agreety --cmd anklume-session"
    # tty1 is the first-boot wizard's (units/anklume-first-boot.service).
    assert "TTYPath=/dev/tty1" in (ROOT / "units/anklume-first-boot.service").read_text()
    assert greetd["terminal"]["vt"] != 1


# KEYBINDINGS.txt's keys as sway and labwc write them.
_SWAY_KEYS = {"Super": "$mod", "Shift": "Shift", "Enter": "Return"}
_LABWC_KEYS = {"Super": "W", "Shift": "S", "Enter": "Return"}


def _spelled(keys: str, names: dict[str, str], joiner: str) -> str:
    return joiner.join(names.get(k, k) for k in keys.split("+"))


def _shortcuts(section: str) -> list[keybindings.Shortcut]:
    found = [s for s in keybindings.parse(keybindings.PACKAGED.read_text())
             if s.section == section]
    assert found, section
    return found


def test_the_shared_shortcuts_are_bound_in_sway_and_labwc() -> None:
    sway = (ROOT / "desktop/sway/config").read_text()
    sway_binds = {line.split()[1].lower(): line.split(None, 2)[2]
                  for line in sway.splitlines() if line.startswith("bindsym ")}
    rc = ET.parse(ROOT / "desktop/labwc/rc.xml").getroot()  # noqa: S314 (our own file)
    labwc_binds = {k.get("key", "").lower(): k for k in rc.iter("keybind")}
    labwc_env = (ROOT / "desktop/labwc/environment").read_text()
    for shortcut in _shortcuts("Desktop"):
        if shortcut.keys == "Alt+Shift":  # a layout switch: xkb's option, not a binding
            assert "xkb_options grp:alt_shift_toggle" in sway
            assert "XKB_DEFAULT_OPTIONS=grp:alt_shift_toggle" in labwc_env
            assert "xkb_layout fr,us" in sway and "XKB_DEFAULT_LAYOUT=fr,us" in labwc_env
            continue
        assert _spelled(shortcut.keys, _SWAY_KEYS, "+").lower() in sway_binds, shortcut
        assert _spelled(shortcut.keys, _LABWC_KEYS, "-").lower() in labwc_binds, shortcut
    assert sway_binds["$mod+return"] == "exec $term" and "set $term foot" in sway
    assert sway_binds["$mod+d"] == "exec $menu" and "set $menu fuzzel" in sway
    for key, program in (("w-return", "foot"), ("w-d", "fuzzel")):
        action = labwc_binds[key].find("action")
        assert action is not None and action.get("command") == program


def test_swayss_own_shortcuts_are_bound() -> None:
    sway = (ROOT / "desktop/sway/config").read_text()
    for shortcut in _shortcuts("Windows (sway)"):
        keys = _spelled(shortcut.keys, _SWAY_KEYS, "+")
        head, _, last = keys.rpartition("+")
        expanded = ([str(n) for n in range(1, 10)] if last == "1..9" else last.split("/"))
        for key in expanded:
            assert re.search(rf"^bindsym {re.escape(head)}\+{key} ", sway, re.M), keys


def test_the_sway_session_starts_the_bar_with_the_tray_mako_the_applet_and_the_guide() -> None:
    sway = (ROOT / "desktop/sway/config").read_text()
    assert "include /etc/sway/config.d/*" in sway
    assert "bar {" not in sway  # one bar: waybar, from config.d/anklume.conf
    labwc = (ROOT / "desktop/labwc/autostart").read_text()
    for program in ("waybar", "mako", "anklume-tray",
                    "anklume-guide --first-login --check && foot anklume-guide"):
        assert re.search(rf"^{re.escape(program)}\b.*&$", labwc, re.M), program


WLROOTS_USER_UNITS = ("waybar.service", "mako.service", "foot-server.service",
                      "foot-server.socket")


@pytest.mark.parametrize("desktop", [Desktop.SWAY, Desktop.LABWC, Desktop.ALL])
def test_the_bar_and_mako_are_started_by_our_compositors_not_by_systemd(
        desktop: Desktop) -> None:
    """Debian enables waybar's, mako's and foot's server's user units in
    graphical-session.target, which Plasma starts: in an image with KDE
    beside sway or labwc, a second bar sat on Plasma's screen and mako took
    org.freedesktop.Notifications from Plasma (the desktops tier saw both).
    Sway's and labwc's own files start them."""
    hooks = install.desktop_hooks(config(desktop), ROOT)
    disable = 'chroot "$1" systemctl --global disable ' + " ".join(WLROOTS_USER_UNITS)
    assert disable in hooks
    assert not any("--global disable" in h for h in install.desktop_hooks(
        config(Desktop.KDE), ROOT))  # a KDE image has none of them


@pytest.mark.parametrize(("desktop", "base", "diverted"), [
    (Desktop.ALL, Base.DEBIAN, True), (Desktop.SWAY, Base.DEBIAN, False),
    (Desktop.LABWC, Base.DEBIAN, False), (Desktop.KDE, Base.DEBIAN, False),
    (Desktop.ALL, Base.ARCH, False)])
def test_beside_kde_makos_activation_file_is_diverted(
        desktop: Desktop, base: Base, diverted: bool) -> None:
    """mako's and Plasma's activation files both offer
    org.freedesktop.Notifications; in the all image's KDE session an early
    notice started mako, which kept the name from Plasma's shell (the
    desktops tier saw it). sway and labwc start mako themselves."""
    built = BuildConfig(out=Path("/nonexistent/x.img"), desktop=desktop, zfs=False, base=base)
    hooks = install.desktop_hooks(built, ROOT)
    divert = [h for h in hooks if "dpkg-divert" in h]
    assert bool(divert) is diverted, hooks
    if diverted:
        words = divert[0].split()
        mako = "/usr/share/dbus-1/services/fr.emersion.mako.service"  # mako-notifier's
        assert words[words.index("--add") + 1] == mako
        to = Path(words[words.index("--divert") + 1])
        assert "--rename" in words and "--local" in words
        assert to.parent != Path("/usr/share/dbus-1/services"), to  # where dbus-daemon looks
        assert f'mkdir -p "$1"{to.parent}' in hooks[:hooks.index(divert[0])]
        # The compositors that need mako start it.
        assert "exec mako" in (ROOT / "desktop/sway/anklume.conf").read_text()
        assert "\nmako " in (ROOT / "desktop/labwc/autostart").read_text()


# Debian 13's greetd 0.10.3-4: /etc/pam.d/greetd, the service of the sessions
# it starts for a person (its greeter's is greetd-greeter).
DEBIAN_GREETD_PAM = """#%PAM-1.0
@include login

-auth        optional        pam_gnome_keyring.so
-auth        optional        pam_kwallet5.so

-session     optional        pam_gnome_keyring.so auto_start
-session     optional        pam_kwallet5.so auto_start
"""


def open_session(confdir: Path, service: str) -> dict[str, str]:
    """Linux-PAM opens a session of ``service`` from ``confdir``'s files (as
    greetd does, less the credentials): the PAM environment it leaves."""
    pam = ctypes.CDLL(ctypes.util.find_library("pam") or "libpam.so.0")
    pam.pam_getenvlist.restype = ctypes.POINTER(ctypes.c_char_p)

    class Conversation(ctypes.Structure):
        _fields_ = [("conv", ctypes.c_void_p), ("appdata_ptr", ctypes.c_void_p)]

    conversation = Conversation(None, None)  # no module here converses
    handle = ctypes.c_void_p()
    assert pam.pam_start_confdir(service.encode(), b"nobody", ctypes.byref(conversation),
                                 str(confdir).encode(), ctypes.byref(handle)) == 0
    try:
        assert pam.pam_open_session(handle, 0) == 0
        listed = pam.pam_getenvlist(handle)
        found: list[str] = []
        while listed[len(found)]:
            found.append(listed[len(found)].decode())
        return dict(entry.partition("=")[::2] for entry in found)
    finally:
        pam.pam_end(handle, 0)


def test_greetds_sessions_are_wayland_before_pam_systemd_registers_them(tmp_path: Path) -> None:
    """greetd gives pam_systemd no session type: logind registered Plasma's
    session as tty (sway and labwc ask logind for wayland themselves; KWin
    does not). The image puts pam_env first in greetd's service, with the
    type; its included stacks (login's, where pam_systemd is) see it."""
    root = tmp_path / "root"
    pam_d = root / "etc/pam.d"
    pam_d.mkdir(parents=True)
    (pam_d / "greetd").write_text(DEBIAN_GREETD_PAM)
    for hook in install.session_type_hooks():
        subprocess.run(["sh", "-c", hook, "sh", str(root)], check=True)
    rules = (pam_d / "greetd").read_text()
    # Read where the image has it: the repository's file, as copied.
    installed = {t: s for s, t in install.session_files(config(Desktop.KDE))}
    conffile = install.SESSION_TYPE_CONF
    assert installed[conffile] == "desktop/greetd/session-type.conf"
    # Linux-PAM finds a relative include in /etc/pam.d whatever the directory
    # the session was opened from: this one's login by its full name.
    (pam_d / "greetd").write_text(rules.replace(conffile, str(ROOT / installed[conffile]))
                                  .replace("@include login", f"@include {pam_d / 'login'}"))
    # login's stacks stand for Debian's (pam_systemd in common-session): what
    # they see of the type, written by pam_exec.
    seen = tmp_path / "seen"
    probe = tmp_path / "probe"
    probe.write_text('#!/bin/sh\nprintf %s "$XDG_SESSION_TYPE" > "$1"\n')
    probe.chmod(0o755)
    (pam_d / "login").write_text(f"session required pam_exec.so {probe} {seen}\n"
                                 "session required pam_permit.so\n")
    assert open_session(pam_d, "greetd")["XDG_SESSION_TYPE"] == "wayland"
    assert seen.read_text() == "wayland"
    assert rules.endswith(DEBIAN_GREETD_PAM)  # the rest as Debian has it


def desktop_entry(path: Path) -> configparser.SectionProxy:
    """An XDG desktop entry's keys, read as test_desktop_files.py reads them."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys as written
    parser.read(path)
    return parser["Desktop Entry"]


def test_plasmas_autostart_opens_the_guide_in_konsole_itself() -> None:
    """Plasma 6 starts XDG autostart through systemd's
    xdg-autostart-generator (plasma-workspace.target wants
    xdg-desktop-autostart.target), which ignores Terminal=true: the guide
    would run with no terminal. So the entry opens konsole itself, as sway's
    and labwc's own files open foot, and only when the guide is wanted."""
    guide = desktop_entry(ROOT / "desktop/autostart/anklume-guide.desktop")
    assert guide.get("Terminal", "false") == "false", dict(guide)
    assert guide["Exec"] == (
        'sh -c "anklume-guide --first-login --check && exec konsole -e anklume-guide"'), \
        dict(guide)
    assert guide["OnlyShowIn"] == "KDE;", dict(guide)  # the other desktops open it in foot


@pytest.mark.parametrize(("cmdline", "desktops", "chosen", "noted"), [
    ("boot=anklume quiet", ["sway", "labwc", "kde"], "sway", False),
    ("boot=anklume anklume.desktop=kde quiet", ["sway", "labwc", "kde"], "kde", False),
    ("anklume.desktop=labwc", ["sway", "labwc"], "labwc", False),
    ("anklume.desktop=kde", ["sway"], "sway", True),  # the other slot's entry
    ("xanklume.desktop=kde", ["sway", "kde"], "sway", False),
    ("anklume.desktop=kde anklume.desktop=labwc", ["sway", "labwc", "kde"], "labwc", False),
])
def test_the_session_is_the_one_the_boot_entry_asked_for(
        cmdline: str, desktops: list[str], chosen: str, noted: bool) -> None:
    name, note = session.choose(cmdline, desktops)
    assert name == chosen and (note is not None) is noted


def test_the_desktops_file_and_an_image_without_a_desktop() -> None:
    assert session.offered("sway\n\nlabwc\ngnome\nkde\n") == ["sway", "labwc", "kde"]
    with pytest.raises(session.SessionError, match="no desktop"):
        session.choose("", [])
    assert {"sway", "labwc", "kde"} == set(session.SESSIONS) == \
        {d.value for d in Desktop} - {"minimal", "all"}


def test_the_boot_menu_has_an_entry_for_each_desktop_after_the_first() -> None:
    entries = be.wanted_entries(A, {A, B}, 3, UUID, ("sway", "labwc", "kde"))
    extra = {n: t for n, t in entries.items() if "desktop" in n}
    assert sorted(extra) == ["anklume-5-desktop-a-kde.conf", "anklume-5-desktop-a-labwc.conf"]
    for name, text in extra.items():
        desktop = name.rsplit("-", 1)[1].removesuffix(".conf")
        profile = {"labwc": 6, "kde": 7}[desktop]  # after the six of every image
        assert f"options @{profile} boot=anklume anklume.persist=PARTUUID={UUID} "\
               f"anklume.kernel=A anklume.toram=1 anklume.desktop={desktop} quiet" in text
        assert "linux /EFI/anklume/slot-a.efi" in text
        assert "panic=" not in text  # only a person picks it: not counted
        assert be.is_ours(name) and be.parse_default(name) is None
    # The others are as without desktops; sway (the default) has no entry of its own.
    assert {n: t for n, t in entries.items() if n not in extra} == \
        be.wanted_entries(A, {A, B}, 3, UUID)


def test_a_change_of_primary_moves_the_desktop_entries_to_it() -> None:
    desktops = ("sway", "kde")
    present = list(be.wanted_entries(A, {A, B}, 3, UUID, desktops))
    plan = be.plan(present, be.wanted_entries(B, {A, B}, 3, UUID, desktops), keep_counter=True)
    assert "anklume-5-desktop-b-kde.conf" in plan.write
    assert "anklume-5-desktop-a-kde.conf" in plan.delete


def test_a_desktop_name_that_cannot_be_a_file_name_is_refused() -> None:
    assert be.read_desktops("sway\nkde\n../x\nKDE\n\n") == ("sway", "kde")
    with pytest.raises(ValueError, match="not a desktop"):
        be.wanted_entries(A, {A}, 3, UUID, ("sway", "../../x"))
    assert not be.is_ours("anklume-5-desktop-a-../x.conf")


def test_the_daemon_offers_the_running_images_desktops(tmp_path: Path) -> None:
    listing = tmp_path / "desktops"
    menu = BootMenu(lambda: None, listing)
    assert menu.desktops() == ()  # a console-only image has no such file
    listing.write_text("sway\nlabwc\n")
    assert menu.desktops() == ("sway", "labwc")
    assert str(menu.desktops_file) == str(tmp_path / "desktops")
    assert str(BootMenu(lambda: None).desktops_file) == install.DESKTOPS_FILE


def test_the_images_first_menu_has_the_desktop_entries() -> None:
    assert sorted(esp.entries(UUID, ("sway", "labwc"))) == [
        "anklume-1-live-a+3-0.conf", "anklume-3-stick-a.conf", "anklume-4-slot-a.conf",
        "anklume-5-desktop-a-labwc.conf"]


def test_the_guides_web_mode_without_textual_serve_says_so(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The image has no textual-serve (Debian 13 does not package it)."""
    import sys

    from anklume_desktop.guide.__main__ import main

    monkeypatch.delitem(sys.modules, "anklume_desktop.web_guard", raising=False)
    monkeypatch.setitem(sys.modules, "textual_serve", None)
    monkeypatch.setitem(sys.modules, "textual_serve.server", None)
    assert main(["--web", "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert "the web mode needs textual_serve" in err and "Traceback" not in err


def session_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, desktops: str,
               cmdline: str) -> list[list[str]]:
    """anklume-session on these files, the desktops it starts listed (FAKE:
    no compositor here, each start fails as a missing program's would)."""
    (tmp_path / "desktops").write_text(desktops)
    (tmp_path / "cmdline").write_text(cmdline)
    monkeypatch.setattr(session, "DESKTOPS_FILE", tmp_path / "desktops")
    monkeypatch.setattr(session, "CMDLINE", tmp_path / "cmdline")
    started: list[list[str]] = []

    def execvp(file: str, args: list[str]) -> None:
        started.append(args)
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "execvp", execvp)
    return started


def test_anklume_session_execs_the_chosen_desktop_with_its_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    started = session_of(tmp_path, monkeypatch, "sway\nkde\n",
                         "boot=anklume anklume.desktop=kde quiet\n")
    journalled: list[str] = []
    monkeypatch.setattr(session, "to_the_journal", journalled.append)
    monkeypatch.setattr(session, "wait_for_the_graphics", lambda: 0.0)
    for name in ("XDG_CURRENT_DESKTOP", "XDG_SESSION_DESKTOP", "XDG_SESSION_TYPE"):
        monkeypatch.delenv(name, raising=False)
    assert session.main() == 1
    assert started == [["startplasma-wayland"]]
    assert journalled == ["kde"]  # its output, before its exec
    assert (os.environ["XDG_CURRENT_DESKTOP"], os.environ["XDG_SESSION_TYPE"]) == ("KDE", "wayland")
    assert "cannot start kde: No such file or directory" in capsys.readouterr().err
    (tmp_path / "desktops").unlink()
    assert session.main() == 1
    assert f"cannot read {tmp_path / 'desktops'}: No such file" in capsys.readouterr().err
    assert len(started) == 1


def test_the_desktops_output_goes_to_the_journal_with_its_name(tmp_path: Path) -> None:
    """What the desktop writes reaches journald's stream socket after
    sd_journal_stream_fd's header (a socket here stands for journald's)."""
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "stdout"))
    listening.listen(1)
    read_end, write_end = os.pipe()  # stands for the session's stderr
    try:
        assert session.to_the_journal("sway", (write_end,), tmp_path / "stdout")
        conn, _ = listening.accept()
        line = b"[ERROR] [wlr] [backend/drm/drm.c] no DRM device\n"
        os.write(write_end, line)
        os.close(write_end)
        received = b""
        while not received.endswith(b"device\n"):
            received += conn.recv(4096)
        assert received == b"sway\n\n6\n0\n0\n0\n0\n" + line
        conn.close()
    finally:
        listening.close()
        os.close(read_end)
    _, kept = os.pipe()
    assert not session.to_the_journal("sway", (kept,), tmp_path / "absent")  # no journald
    assert os.write(kept, b"still the pipe") == 14


class Seat:
    """FAKE logind: CanGraphical as the answers say, on a clock that the
    waits move."""

    def __init__(self, answers: Sequence[bool | None]):
        self.answers = list(answers)
        self.now = 0.0

    def can_graphical(self) -> bool | None:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_session_waits_for_the_graphics_card_then_starts() -> None:
    seat = Seat([False] * 6 + [True])  # the card comes after 3 s
    assert session.wait_for_the_graphics(120, seat.can_graphical, lambda: seat.now,
                                         seat.sleep) == 3.0
    seat = Seat([True])
    assert session.wait_for_the_graphics(120, seat.can_graphical, lambda: seat.now,
                                         seat.sleep) == 0.0
    seat = Seat([None])  # logind cannot be asked: no reason to wait
    assert session.wait_for_the_graphics(120, seat.can_graphical, lambda: seat.now,
                                         seat.sleep) == 0.0
    seat = Seat([False])  # never: the desktop starts anyway after the wait
    assert session.wait_for_the_graphics(120, seat.can_graphical, lambda: seat.now,
                                         seat.sleep) is None
    assert seat.now == 120.0


def test_the_session_says_when_it_starts_without_a_graphics_card(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    started = session_of(tmp_path, monkeypatch, "sway\n", "quiet\n")
    monkeypatch.setattr(session, "to_the_journal", lambda name: True)
    monkeypatch.setattr(session, "wait_for_the_graphics", lambda: None)
    assert session.main() == 1
    assert started == [["sway"]]  # started all the same
    assert "seat0 has no graphics card after 120 s: starting sway anyway" in \
        capsys.readouterr().err
