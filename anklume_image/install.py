"""anklume Live's own files in the image, as mmdebstrap customize hooks.

The daemon and the CLI run on the distribution's Python and python3-*
packages: their source trees go to dist-packages (no pip, no virtualenv), with
the three entry points as small scripts. Units, the bus policy and the polkit
policy go where a Debian package would put them, and the units are enabled.
The initramfs gets the boot half (initramfs/) through its initramfs-tools
hook, with the public key that verifies slot manifests.

An image with a desktop also gets the desktop clients (anklume_desktop: the
tray, the guide, the session greetd starts), the live user greetd logs in,
and each desktop's session files from desktop/ (docs/desktop.md).

The same hooks build the Arch image (``--base arch``, arch_rootfs.py runs
them with mmdebstrap's ``copy-in``/``upload``/``sync-out`` as shell
functions); where Arch differs (Python's site-packages, the mkinitcpio
hook, the kernel's file names) the hook says which base it is for.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from anklume_image import cli_docs, uki, wheels
from anklume_image.config import Base, BuildConfig, Desktop

DIST_PACKAGES = "/usr/lib/python3/dist-packages"
# Arch's Python has no dist-packages: its site-packages directory names the
# Python version, so the Arch build asks the image's python3 for it and
# keeps it in this variable for the hooks (arch_rootfs.py).
ARCH_SITE = '"$ANKLUME_SITE"'
# The project's Python packages the system runs (anklumectl stands on the
# client library): copied whole into dist-packages.
PYTHON_PACKAGES = ("anklumed", "anklumectl", "anklume_client")
ENTRY_POINTS = {
    "anklumed": "anklumed.main",
    "anklumectl": "anklumectl.main",
    "anklume-bundle": "anklumed.bundle_tool",
}
# The desktop clients, in images with a desktop.
DESKTOP_PACKAGES = ("anklume_desktop",)
DESKTOP_ENTRY_POINTS = {
    "anklume-guide": "anklume_desktop.guide.__main__",
    "anklume-tray": "anklume_desktop.tray.applet",
    "anklume-session": "anklume_desktop.session",
}
LIVE_USER = "anklume"  # greetd logs it in at boot (desktop/greetd/config.toml)
# The group polkit/50-org.anklume.live1.rules lets use anklumed's actions
# from an active local session, without a password (docs/dbus.md, "polkit").
ADMIN_GROUP = "anklume-admin"
POLKIT_RULE = "50-org.anklume.live1.rules"
# video, render, input: the compositor's devices when logind has not given them
LIVE_USER_GROUPS = f"audio,video,render,input,{ADMIN_GROUP}"
DESKTOPS_FILE = "/usr/share/anklume/desktops"  # read by anklume-session and anklumed
UNITS = ("anklumed.service", "anklume-boot-check.service", "anklume-data-mount.service",
         "anklume-first-boot.service", "anklume-incus-pool.service")
DROP_INS = ("anklume-data-mount.service.d", "anklume-first-boot.service.d")
INITRAMFS_LIB = "/usr/lib/anklume/initramfs"
PUBLIC_KEY_NAME = "anklume-image.pem"


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def _entry_point(name: str, module: str) -> str:
    script = f"#!/usr/bin/python3\nimport sys\nfrom {module} import main\nsys.exit(main())\n"
    return (f"printf %s {_q(script)} > \"$1\"/usr/bin/{name} && "
            f"chmod 0755 \"$1\"/usr/bin/{name}")


def python_hooks(checkout: Path, config: BuildConfig) -> list[str]:
    packages = PYTHON_PACKAGES + (DESKTOP_PACKAGES if config.sessions else ())
    entry_points = {**ENTRY_POINTS, **(DESKTOP_ENTRY_POINTS if config.sessions else {})}
    site = ARCH_SITE if config.base is Base.ARCH else DIST_PACKAGES
    sources = " ".join(_q(checkout / p) for p in packages)
    installed = " ".join(f"{site}/{p}" for p in packages)
    in_root = " ".join(f"\"$1\"{site}/{p}" for p in packages)
    hooks = [f"copy-in {sources} {site}",
             # What the checkout's editable install or tests left behind.
             f"find {in_root} -name __pycache__ -prune -exec rm -rf {{}} +"]
    hooks += [_entry_point(name, module) for name, module in entry_points.items()]
    hooks.append(f"chroot \"$1\" python3 -m compileall -q {installed}")
    return hooks


# Where Debian's Python keeps what dpkg does not install
# (/usr/local/lib/python3.X/dist-packages): asked of the image's own python3.
_PURELIB = "chroot \"$1\" python3 -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))'"


def wheel_hooks(config: BuildConfig) -> list[str]:
    """The pinned wheels the build verified and unpacked (wheels.stage), and
    their list in /usr/share/anklume/wheels."""
    chosen = wheels.wanted(config)
    if not chosen:
        return []
    staged = wheels.staging_dir(config)
    return [
        f"site=$({_PURELIB}) && mkdir -p \"$1$site\" && "
        f"cp -R --preserve=mode,timestamps {_q(staged)}/. \"$1$site\"/ && "
        "chroot \"$1\" python3 -m compileall -q \"$site\"",
        f"mkdir -p \"$1\"{Path(wheels.LIST_IN_IMAGE).parent} && "
        f"printf %s {_q(wheels.listing(chosen))} > \"$1\"{wheels.LIST_IN_IMAGE}",
    ]


# Each desktop's session files: (file in the checkout, path in the image).
_GRAPHICAL_FILES = [
    ("desktop/greetd/config.toml", "/etc/greetd/config.toml"),
    ("desktop/greetd/session-type.conf", "/etc/greetd/session-type.conf"),  # SESSION_TYPE_RULE
    ("anklume_desktop/guide/KEYBINDINGS.txt", "/usr/share/anklume/KEYBINDINGS.txt"),
]
_WAYBAR = ("desktop/waybar/config.jsonc", "/etc/xdg/waybar/config.jsonc")
# The user units Debian enables for the bar, mako and foot's server.
WLROOTS_USER_UNITS = ("waybar.service", "mako.service", "foot-server.service",
                      "foot-server.socket")
_DESKTOP_FILES: dict[Desktop, list[tuple[str, str]]] = {
    Desktop.SWAY: [("desktop/sway/config", "/etc/sway/config"),
                   ("desktop/sway/anklume.conf", "/etc/sway/config.d/anklume.conf"), _WAYBAR],
    Desktop.LABWC: [("desktop/labwc/rc.xml", "/etc/xdg/labwc/rc.xml"),
                    ("desktop/labwc/environment", "/etc/xdg/labwc/environment"),
                    ("desktop/labwc/autostart", "/etc/xdg/labwc/autostart"), _WAYBAR],
    # Plasma runs XDG autostart (sway and labwc do not: their files above).
    Desktop.KDE: [("desktop/autostart/anklume-tray.desktop",
                   "/etc/xdg/autostart/anklume-tray.desktop"),
                  ("desktop/autostart/anklume-guide.desktop",
                   "/etc/xdg/autostart/anklume-guide.desktop")],
}


def session_files(config: BuildConfig) -> list[tuple[str, str]]:
    """The desktop/ files this image installs, and where (none when minimal)."""
    if not config.sessions:
        return []
    files = list(_GRAPHICAL_FILES)
    for desktop in config.sessions:
        files += [f for f in _DESKTOP_FILES[desktop] if f not in files]
    return files


# greetd opens a person's session with no XDG_SESSION_TYPE (its initial
# session, and agreety's, have no greeter to give one), so pam_systemd
# registers it with logind as a tty session. sway and labwc ask logind for
# wayland once they run (libseat); KWin does not, and Plasma's session stayed
# tty. Every session greetd starts for a person is anklume-session's Wayland
# desktop: pam_env gives the type first in greetd's PAM service (its greeter
# has a service of its own, greetd-greeter, left as it is).
GREETD_PAM = "/etc/pam.d/greetd"
SESSION_TYPE_CONF = "/etc/greetd/session-type.conf"  # desktop/greetd/session-type.conf
SESSION_TYPE_RULE = f"session required pam_env.so conffile={SESSION_TYPE_CONF} readenv=0"


def session_type_hooks() -> list[str]:
    """SESSION_TYPE_RULE first in greetd's PAM service: before its included
    stacks, where pam_systemd registers the session."""
    head = "# anklume Live (anklume_image/install.py): the session type for pam_systemd"
    return [f"f=\"$1\"{GREETD_PAM} && {{ printf '%s\\n' {_q(head)} {_q(SESSION_TYPE_RULE)}; "
            "cat \"$f\"; } > \"$f.anklume\" && mv \"$f.anklume\" \"$f\""]


# mako's D-Bus activation file offers org.freedesktop.Notifications, and so
# does Plasma's (its waiter, until plasmashell takes the name): with both,
# which one dbus-daemon starts is not defined, and under Plasma an early
# notice started mako, which kept the name from Plasma's shell (the desktops
# tier saw it). sway's and labwc's files start mako themselves: beside KDE,
# mako's file is diverted out of dbus-daemon's directory.
MAKO_ACTIVATION = "/usr/share/dbus-1/services/fr.emersion.mako.service"
DIVERTED = "/usr/share/anklume/diverted"


def mako_divert_hooks(config: BuildConfig) -> list[str]:
    """Debian's dpkg-divert, which keeps dpkg's view of the file true. The
    Arch image (never booted) keeps mako's file: the tray does not depend on
    it (it never starts a notification daemon), other programs might."""
    sessions = set(config.sessions)
    if config.base is not Base.DEBIAN or Desktop.KDE not in sessions \
            or not {Desktop.SWAY, Desktop.LABWC} & sessions:
        return []
    return [f"mkdir -p \"$1\"{DIVERTED}",
            f"chroot \"$1\" dpkg-divert --local --rename --divert "
            f"{DIVERTED}/{Path(MAKO_ACTIVATION).name} --add {MAKO_ACTIVATION}"]


def desktop_hooks(config: BuildConfig, checkout: Path) -> list[str]:
    """The session files, the desktops' list, the live user, the login."""
    if not config.sessions:
        return []
    hooks = []
    for source, target in session_files(config):
        # copy-in puts a file into a directory under its own name (each
        # target keeps its source's name: tests/unit/test_image_desktops.py).
        directory = str(Path(target).parent)
        hooks += [f"mkdir -p \"$1\"{directory}", f"copy-in {_q(checkout / source)} {directory}"]
    if config.base is Base.ARCH:
        # Arch's greetd package names its greeter user "greeter" (Debian's: _greetd).
        hooks.append("sed -i 's/^user = \"_greetd\"$/user = \"greeter\"/' "
                     "\"$1\"/etc/greetd/config.toml")
    listing = "".join(f"{d.value}\n" for d in config.sessions)
    hooks += [
        f"printf %s {_q(listing)} > \"$1\"{DESKTOPS_FILE}",
        f"chroot \"$1\" useradd --create-home --user-group --groups {LIVE_USER_GROUPS} "
        f"--shell /bin/bash --comment 'anklume Live' {LIVE_USER}",
        # No password: greetd logs the live user in at boot; after a log out,
        # agreety takes an empty one (pam_unix nullok). Not in sudo: changes
        # to the system go through anklumed, which polkit lets ADMIN_GROUP
        # use from the active local session.
        f"chroot \"$1\" passwd --delete {LIVE_USER}",
        "chroot \"$1\" systemctl enable greetd.service",
        "chroot \"$1\" systemctl set-default graphical.target",
    ]
    if config.base is Base.DEBIAN and {Desktop.SWAY, Desktop.LABWC} & set(config.sessions):
        # Debian enables these user units in graphical-session.target, which
        # Plasma starts (sway and labwc do not): beside KDE, a second bar sat
        # on Plasma's screen and mako took the notifications' name from it.
        # Sway's and labwc's own files start them.
        hooks.append("chroot \"$1\" systemctl --global disable " + " ".join(WLROOTS_USER_UNITS))
    return hooks + session_type_hooks() + mako_divert_hooks(config)


def system_hooks(checkout: Path) -> list[str]:
    units = " ".join(_q(checkout / "units" / u) for u in UNITS)
    return [
        f"copy-in {units} /usr/lib/systemd/system",
        *[f"copy-in {_q(checkout / 'units' / d)} /usr/lib/systemd/system" for d in DROP_INS],
        f"copy-in {_q(checkout / 'dbus' / 'org.anklume.Live1.conf')} /usr/share/dbus-1/system.d",
        f"copy-in {_q(checkout / 'dbus' / 'org.anklume.Live1.service')} "
        "/usr/share/dbus-1/system-services",
        f"copy-in {_q(checkout / 'polkit' / 'org.anklume.live1.policy')} "
        "/usr/share/polkit-1/actions",
        f"copy-in {_q(checkout / 'polkit' / POLKIT_RULE)} /usr/share/polkit-1/rules.d",
        # In every image (a minimal one too): an administrator may add a user.
        f"chroot \"$1\" groupadd --system {ADMIN_GROUP}",
        "chroot \"$1\" systemctl enable " + " ".join(UNITS),
        *catalog_hooks(checkout),
        # squashfs stores no POSIX ACLs, and journald's directory has some:
        # made again plain; systemd-tmpfiles puts the ACLs back at each boot.
        "rm -rf \"$1\"/var/log/journal && mkdir -m 2755 \"$1\"/var/log/journal",
    ]


def catalog_hooks(checkout: Path) -> list[str]:
    """The journal's explanation of anklumed's events (journalctl -x)."""
    return [f"copy-in {_q(checkout / 'catalog' / 'anklume.catalog')} /usr/lib/systemd/catalog",
            "chroot \"$1\" journalctl --update-catalog"]


# Where Arch's shells look instead of Debian's (zsh: Debian's vendor-completions
# is not in Arch's fpath).
_ARCH_PLACES = {"/usr/share/zsh/vendor-completions": "/usr/share/zsh/site-functions"}


def cli_docs_hooks(out: Path, base: Base = Base.DEBIAN) -> list[str]:
    """anklumectl's shell completions and man page: made from its parser now, on
    the build host (shtab, argparse-manpage), then copied to their places."""
    hooks = []
    for path in cli_docs.write(out).values():
        target = "/" + str(path.parent.relative_to(out))
        if base is Base.ARCH:
            target = _ARCH_PLACES.get(target, target)
        hooks += [f"mkdir -p \"$1\"{target}", f"copy-in {_q(path)} {target}"]
    return hooks


def key_hooks(public_key: Path | None) -> list[str]:
    hooks = ["mkdir -p \"$1\"/etc/anklume/keys.d"]
    if public_key is not None:
        hooks.append(f"upload {_q(public_key)} /etc/anklume/keys.d/{PUBLIC_KEY_NAME}")
    return hooks


def initramfs_hooks(checkout: Path, base: Base = Base.DEBIAN,
                    desktops: tuple[str, ...] = ()) -> list[str]:
    src = checkout / "initramfs"
    scripts = " ".join(_q(p) for p in sorted(src.glob("anklume-*.sh")))
    shared = [f"mkdir -p \"$1\"{INITRAMFS_LIB}", f"copy-in {scripts} {INITRAMFS_LIB}"]
    if base is Base.ARCH:
        return [*shared, *mkinitcpio_hooks(checkout), *uki.uki_hooks(base, desktops)]
    return [
        *shared,
        f"copy-in {_q(src / 'initramfs-tools' / 'hooks' / 'anklume')} "
        "/usr/share/initramfs-tools/hooks",
        f"copy-in {_q(src / 'initramfs-tools' / 'scripts' / 'anklume')} "
        "/usr/share/initramfs-tools/scripts",
        # The early start of the boot's modules (anklume-boot.sh, load_modules).
        f"copy-in {_q(src / 'initramfs-tools' / 'scripts' / 'init-top' / 'anklume')} "
        "/usr/share/initramfs-tools/scripts/init-top",
        "chroot \"$1\" update-initramfs -u -k all",
        *uki.uki_hooks(base, desktops),
    ]


# Arch's initramfs: mkinitcpio with the busybox init ("base", not the
# "systemd" hook, whose init runs no runtime hook) and our hook last, so
# its mount handler is the one init calls. No "autodetect": in the build's
# chroot it would keep only the build host's modules.
MKINITCPIO_CONF = "/etc/anklume/mkinitcpio.conf"
MKINITCPIO_SETTINGS = (
    "# anklume Live's initramfs (anklume_image/install.py): boot=anklume runs\n"
    "# /usr/lib/initcpio/hooks/anklume, which mounts the verified slot.\n"
    "MODULES=()\n"
    "BINARIES=()\n"
    "FILES=()\n"
    "HOOKS=(base udev modconf kms keyboard block anklume)\n"
    "COMPRESSION=\"zstd\"\n"
)


def mkinitcpio_hooks(checkout: Path) -> list[str]:
    src = checkout / "initramfs" / "mkinitcpio"
    return [
        f"copy-in {_q(src / 'install' / 'anklume')} /usr/lib/initcpio/install",
        f"copy-in {_q(src / 'hooks' / 'anklume')} /usr/lib/initcpio/hooks",
        f"mkdir -p \"$1\"{MKINITCPIO_CONF.rsplit('/', 1)[0]}",
        f"printf %s {_q(MKINITCPIO_SETTINGS)} > \"$1\"{MKINITCPIO_CONF}",
        # the one kernel of the image (Arch keeps its modules under /usr/lib/modules)
        "chroot \"$1\" sh -c " + _q(
            f"set -e; {uki.ARCH_KERNEL_VERSION}"
            f"mkinitcpio --config {MKINITCPIO_CONF} --kernel \"$v\" "
            f"--generate {uki.ARCH_INITRAMFS}"),
    ]


def updated_stamp_hook() -> str:
    """The tree's last hook: /etc and /var marked as updated for this /usr,
    as systemd-update-done marks them after a first boot. The live system's
    /etc and /var are the slot's, under a tmpfs that each boot starts
    empty: without the marks every boot is "after an update" and redoes
    what the build already did (ConditionNeedsUpdate=: ldconfig.service,
    13 s of a boot under TCG, the journal catalog, hwdb). The marks take
    /usr's time, which the tarball and the squashfs keep to the second
    (clamped alike by SOURCE_DATE_EPOCH): equal seconds, no nanoseconds,
    is "up to date" for systemd."""
    return 'touch -r "$1"/usr "$1"/etc/.updated "$1"/var/.updated'


def customize_hooks(config: BuildConfig, checkout: Path,
                    public_key: Path | None = None) -> list[str]:
    return [*python_hooks(checkout, config), *system_hooks(checkout), *key_hooks(public_key),
            *cli_docs_hooks(config.work_dir / "cli-docs", config.base),
            *desktop_hooks(config, checkout), *wheel_hooks(config),
            *initramfs_hooks(checkout, config.base, tuple(d.value for d in config.sessions))]
