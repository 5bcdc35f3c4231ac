"""The session's image is a sway image (conftest's ``built``): what a desktop
adds, read out of slot A's squashfs without mounting it (``unsquashfs -cat``,
``-lln``), and sway's own check of its configuration. The boot to
graphical.target judged by the session it starts is test_sway_session.py.
"""

from __future__ import annotations

import http.client
import select
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from anklume_desktop.guide import keybindings
from anklume_desktop.guide.__main__ import NO_BROWSER
from anklume_image import install, wheels
from anklume_image.config import Desktop
from anklumed.persist import PersistDir
from anklumed.slots import model
from anklumed.stick import SlotName
from devtools.slowness import scaled
from tests.image.conftest import Built
from tests.image.test_build import extract, sh

pytestmark = pytest.mark.image
ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = ("/usr/bin/sway", "/usr/bin/waybar", "/usr/bin/foot", "/usr/bin/fuzzel",
            "/usr/bin/mako", "/usr/sbin/greetd", "/usr/sbin/agreety", "/usr/bin/anklume-guide",
            "/usr/bin/anklume-tray", "/usr/bin/anklume-session")


@pytest.fixture(scope="module")
def slot(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert built.config.desktop is Desktop.SWAY, "the session's image must be a sway image"
    work = tmp_path_factory.mktemp("desktop-slot")
    part = extract(built.image, 4, work / "persist.img")
    files = work / "persist"
    files.mkdir()
    sh("debugfs", "-R", f"rdump / {files}", part)
    meta = model.read_slots_state(PersistDir(files)).meta[SlotName.A]
    assert meta.size is not None
    return extract(built.image, 2, work / "slot-a.img", meta.size)


def cat(slot: Path, path: str) -> bytes:
    return subprocess.run(["unsquashfs", "-cat", str(slot), path], check=True,
                          capture_output=True).stdout


@pytest.fixture(scope="module")
def listing(slot: Path) -> dict[str, str]:
    """Path → the listing's line (mode, numeric owner, size, target of a link)."""
    out = sh("unsquashfs", "-lln", "-d", "", slot)
    lines = {}
    for line in out.splitlines():
        words = line.split(maxsplit=5)
        if len(words) == 6 and words[0][:1] in "-dlcbps":
            lines[words[5].split(" -> ")[0]] = line
    assert "/usr/bin/python3" in lines, out[:2000]
    return lines


def test_the_session_files_and_keybindings_are_installed_as_in_the_checkout(
        built: Built, slot: Path) -> None:
    files = install.session_files(built.config)
    assert files
    for source, target in files:
        assert cat(slot, target) == (ROOT / source).read_bytes(), target
    assert cat(slot, str(keybindings.IMAGE_PATH)) == keybindings.PACKAGED.read_bytes()
    assert cat(slot, install.DESKTOPS_FILE) == b"sway\n"


def test_the_login_starts_the_live_users_session(slot: Path,
                                                 listing: dict[str, str]) -> None:
    for program in PROGRAMS:
        assert program in listing, program
    # waybar reads `config` before `config.jsonc` in a directory: none may hide ours.
    assert "/etc/xdg/waybar/config.jsonc" in listing and "/etc/xdg/waybar/config" not in listing
    assert listing["/etc/systemd/system/default.target"].endswith(
        "-> /usr/lib/systemd/system/graphical.target")
    assert listing["/etc/systemd/system/display-manager.service"].endswith(
        "-> /usr/lib/systemd/system/greetd.service")
    passwd = {line.split(":")[0]: line.split(":") for line in
              cat(slot, "/etc/passwd").decode().splitlines()}
    user = passwd[install.LIVE_USER]
    assert user[5] == f"/home/{install.LIVE_USER}" and user[6] == "/bin/bash"
    assert "_greetd" in passwd  # default_session's user, made by the package
    # greetd's PAM file includes login's (not essential in Debian 13: the
    # first boot of a sway image found greetd failing without it).
    assert b"@include login" in cat(slot, "/etc/pam.d/greetd")
    assert cat(slot, "/etc/pam.d/login")
    home = listing[f"/home/{install.LIVE_USER}"].split()
    assert home[0].startswith("d") and home[1] == f"{user[2]}/{user[3]}"
    shadow = {line.split(":")[0]: line.split(":")[1]
              for line in cat(slot, "/etc/shadow").decode().splitlines()}
    assert shadow[install.LIVE_USER] == ""  # no password: logged in at boot
    groups = {line.split(":")[0]: line.split(":")[3].split(",")
              for line in cat(slot, "/etc/group").decode().splitlines()}
    for group in install.LIVE_USER_GROUPS.split(","):
        assert install.LIVE_USER in groups[group], group
    assert install.LIVE_USER not in groups["sudo"]


def test_the_live_user_may_use_anklumed_from_its_seat_and_has_an_agent(
        slot: Path, listing: dict[str, str]) -> None:
    """The polkit rule, the group it names with the live user alone in it,
    and sway's agent (the rule's verdicts: tests/vm/test_polkit_rule_vm.py)."""
    rule = f"/usr/share/polkit-1/rules.d/{install.POLKIT_RULE}"
    assert cat(slot, rule) == (ROOT / "polkit" / install.POLKIT_RULE).read_bytes()
    mode, owner = listing[rule].split()[:2]
    assert mode == "-rw-r--r--" and owner == "0/0"  # polkitd reads it; only root writes it
    groups = {line.split(":")[0]: line.split(":") for line in
              cat(slot, "/etc/group").decode().splitlines()}
    assert groups[install.ADMIN_GROUP][3].split(",") == [install.LIVE_USER]
    assert int(groups[install.ADMIN_GROUP][2]) < 1000  # a system group
    # The actions' default (auth_admin) stays out of reach: no administrator
    # with an empty password (pam_unix nullok would let one through).
    shadow = {line.split(":")[0]: line.split(":")[1]
              for line in cat(slot, "/etc/shadow").decode().splitlines()}
    assert shadow["root"][:1] in ("*", "!"), shadow["root"]
    assert groups["sudo"][3] == ""
    assert "/usr/bin/lxpolkit" in listing
    assert b"\nexec lxpolkit\n" in cat(slot, "/etc/sway/config.d/anklume.conf")


@pytest.fixture(scope="module")
def root(slot: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("desktop-root") / "root"
    sh("unsquashfs", "-q", "-n", "-d", path, slot)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_clients_run_on_debian_13s_python_packages(root: Path) -> None:
    """The tray and the guide on the image's python3-dbus-fast and
    python3-textual; the session's program chooses from the image's list."""
    out = sh("chroot", root, "python3", "-c",
             "import textual, dbus_fast, anklume_desktop.tray.applet, "
             "anklume_desktop.guide.app, anklume_desktop.session as s; "
             "print(textual.__version__); "
             "print(s.choose('anklume.desktop=kde', s.offered(open(str(s.DESKTOPS_FILE)).read())))")
    version, chosen = out.splitlines()
    assert tuple(int(n) for n in version.split(".")[:2]) >= (2, 1)
    assert chosen.startswith("('sway', ") and "does not have" in chosen
    assert "usage: anklume-guide" in sh("chroot", root, "anklume-guide", "--help")


def test_sway_accepts_the_images_configuration(root: Path) -> None:
    """sway's own check (-C) of /etc/sway/config with what it includes. It
    exits 0 even on errors, which it logs as [ERROR] lines; it makes a
    backend first: a headless one here, drawn by pixman."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "XDG_RUNTIME_DIR": "/tmp",
           "WLR_BACKENDS": "headless", "WLR_RENDERER": "pixman"}
    proc = subprocess.run(["chroot", str(root), "sway", "-C"], capture_output=True,
                          text=True, check=False, env=env, timeout=scaled(60))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[ERROR]" not in proc.stderr, proc.stderr[-3000:]


# What the image's Python says about textual-serve: where it came from, and
# which of its requirements the image's Debian packages do not meet.
_WEB_MODE_CHECK = """
from importlib.metadata import distribution, requires, version
from packaging.requirements import Requirement
import textual_serve, anklume_desktop.web_guard
print(textual_serve.__file__)
print(distribution("textual-serve").read_text("INSTALLER").strip())
unmet = [r for r in requires("textual-serve") if not Requirement(r).specifier.contains(
    version(Requirement(r).name), prereleases=True)]
print(unmet)
"""


def test_the_guides_web_mode_is_on_the_image_from_its_pinned_wheel(
        built: Built, slot: Path, root: Path) -> None:
    """textual-serve (not in Debian 13) from the wheel wheels.py pins, where
    Debian's Python keeps what dpkg does not install, listed, and on
    Debian 13's own aiohttp, aiohttp-jinja2, jinja2, rich and textual."""
    assert cat(slot, wheels.LIST_IN_IMAGE).decode() == wheels.listing(
        wheels.wanted(built.config))
    where, installer, unmet = sh("chroot", root, "python3", "-c", _WEB_MODE_CHECK).splitlines()
    assert where.startswith("/usr/local/lib/python3.") and where.endswith(
        "/dist-packages/textual_serve/__init__.py"), where
    assert installer == wheels.INSTALLER
    assert unmet == "[]"


def _printed_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], scaled(30))
    assert ready, "anklume-guide --web printed no link"
    line = proc.stdout.readline()
    assert "The guide is at http://127.0.0.1:" in line, line
    return line.split("The guide is at ", 1)[1].split()[0]


def test_the_images_guide_serves_its_web_mode_behind_the_guard(root: Path) -> None:
    """The image's anklume-guide --web on the image's aiohttp: the one-time
    link sets the cookie, the page then loads (textual-serve's template,
    aiohttp-jinja2), and a request without the cookie is refused. The image
    ships no browser (docs/desktop.md): in a Wayland session's environment
    the guide finds none and says so."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "WAYLAND_DISPLAY": "wayland-1"}
    proc = subprocess.Popen(["chroot", str(root), "anklume-guide", "--web"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _printed_url(proc)
        port = int(url.split(":")[2].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=scaled(10))
        conn.request("GET", url.split(str(port), 1)[1])
        redeemed = conn.getresponse()
        redeemed.read()
        cookie = redeemed.getheader("Set-Cookie") or ""
        assert redeemed.status == 302 and "HttpOnly" in cookie, (redeemed.status, cookie)
        conn.request("GET", "/")
        refused = conn.getresponse()
        assert refused.status == 403, refused.status
        refused.read()
        conn.request("GET", "/", headers={"Cookie": cookie.split(";")[0]})
        page = conn.getresponse()
        body = page.read().decode()
        assert page.status == 200 and "textual" in body.lower(), (page.status, body[:500])
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=scaled(20))
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert NO_BROWSER in err, err[-2000:]
