"""The packages of the image, by base and desktop.

Everything anklumed needs comes from the distribution (Debian's python3-*
packages, Arch's python-* packages; no pip inside the image), so a security
update of the base is an ordinary rebuild. The one exception is the guide's
web mode, textual-serve, which Debian 13 lacks: a wheel pinned by its sha256
(wheels.py). What Arch does not package is refused before any download,
with a sentence (``NOT_IN_ARCH``), never fetched from elsewhere.
"""

from __future__ import annotations

from anklume_image.config import BuildConfig, Desktop
from anklume_image.errors import BuildError

# The system: kernel, init, the boot chain's tools, the data disk's tools.
DEBIAN_BASE = [
    "linux-image-amd64", "systemd", "systemd-sysv", "systemd-boot-efi", "udev", "dbus",
    "polkitd", "kmod", "initramfs-tools", "busybox", "cryptsetup", "cryptsetup-bin",
    "btrfs-progs", "e2fsprogs", "dosfstools", "util-linux", "dmsetup", "openssl",
    "ca-certificates", "iproute2", "less", "nano", "incus",
    # the boot chain: the slot's UKI (ukify), the ESP written without a mount
    # (mtools), the UKI read out of a slot just written (unsquashfs)
    "systemd-ukify", "mtools", "squashfs-tools",
    # anklumed and anklumectl (pyproject.toml's dependencies, as Debian packages)
    "python3", "python3-dbus-fast", "python3-pydantic", "python3-pyudev",
    "python3-systemd", "python3-rich", "python3-cryptography", "python3-packaging",
    "python3-requests",
]
DEBIAN_ZFS = ["linux-headers-amd64", "zfs-dkms", "zfsutils-linux"]

# What every graphical image adds: the login (greetd starts the live user's
# session, docs/desktop.md), the session bus the tray needs, the welcome
# guide's textual (Debian 13: 2.1.2), what its web mode's textual-serve
# requires (aiohttp, aiohttp-jinja2, jinja2: Debian 13 has them at versions
# it accepts; textual-serve itself Debian 13 does not package: wheels.py
# installs its pinned wheel) and a font for the terminals. `login` is no
# longer essential in Debian 13, and greetd's PAM file includes its
# /etc/pam.d/login: without it greetd fails at its start.
DEBIAN_GRAPHICAL = ["greetd", "login", "dbus-user-session", "python3-textual",
                    "python3-aiohttp", "python3-aiohttp-jinja2", "python3-jinja2",
                    "fonts-dejavu-core"]

# The polkit agent of sway and labwc, started by their session files (GTK 3,
# which waybar brings already; 47 kB, and lxsession-data's 0.8 MB; mate-polkit
# would add accountsservice, a daemon). Plasma starts its own,
# polkit-kde-agent-1, and lxpolkit's XDG autostart entry says NotShowIn=KDE:
# an image with every desktop runs one agent in each. docs/dbus.md, "polkit",
# says what it is for.
POLKIT_AGENT = "lxpolkit"

# What each desktop adds (seed 000: sway and labwc share foot, fuzzel, the
# keyboard shortcuts, waybar with the tray, mako; KDE is the large one and
# has its own bar, tray and notifications).
DEBIAN_DESKTOPS: dict[Desktop, list[str]] = {
    Desktop.MINIMAL: [],
    Desktop.SWAY: ["sway", "waybar", "foot", "fuzzel", "mako-notifier", POLKIT_AGENT],
    Desktop.LABWC: ["labwc", "waybar", "foot", "fuzzel", "mako-notifier", POLKIT_AGENT],
    Desktop.KDE: ["plasma-desktop", "plasma-workspace", "kwin-wayland", "konsole",
                  "polkit-kde-agent-1"],
}


def debian_packages(config: BuildConfig) -> list[str]:
    wanted = list(DEBIAN_BASE)
    if config.zfs:
        wanted += DEBIAN_ZFS
    if config.sessions:
        wanted += DEBIAN_GRAPHICAL
    for desktop in config.sessions:
        wanted += DEBIAN_DESKTOPS[desktop]
    return sorted(set(wanted))


def components(config: BuildConfig) -> list[str]:
    """zfs-dkms is in contrib (its licence), everything else in main."""
    return ["main", "contrib"] if config.zfs else ["main"]


# Arch Linux (--base arch, pacstrap). The same roles as DEBIAN_BASE under
# Arch's names: "base" brings systemd, util-linux, kmod and the shell;
# mkinitcpio (with its busybox) builds the initramfs with our hook; the
# systemd package itself carries systemd-boot and its stub. These names have
# never been resolved by pacman here (no Arch mirror is reachable from the
# machines this was written on): a name Arch does not have stops the build
# with pacman's "target not found" put as a sentence (arch_rootfs.py).
ARCH_BASE = [
    "base", "linux", "mkinitcpio", "systemd", "systemd-ukify", "dbus", "polkit",
    "cryptsetup", "device-mapper", "btrfs-progs", "e2fsprogs", "dosfstools", "openssl",
    "ca-certificates", "iproute2", "less", "nano", "incus", "mtools", "squashfs-tools",
    # anklumed and anklumectl (pyproject.toml's dependencies, as Arch packages)
    "python", "python-dbus-fast", "python-pydantic", "python-pyudev",
    "python-systemd", "python-rich", "python-cryptography", "python-packaging",
    "python-requests",
]
# login is util-linux's and the D-Bus user session is Arch's default.
ARCH_GRAPHICAL = ["greetd", "python-textual", "ttf-dejavu"]
ARCH_DESKTOPS: dict[Desktop, list[str]] = {
    Desktop.MINIMAL: [],
    Desktop.SWAY: ["sway", "waybar", "foot", "fuzzel", "mako"],
    Desktop.LABWC: ["labwc", "waybar", "foot", "fuzzel", "mako"],
    Desktop.KDE: ["plasma-desktop", "plasma-workspace", "kwin", "konsole"],
}
# What the image would need that Arch's own repositories do not have. The
# AUR is not used: its packages are built from scripts nobody signs for the
# image, and the build installs only what pacman verifies.
NOT_IN_ARCH = {
    "zfs": "ZFS (zfs-dkms, zfs-utils) is not in Arch's repositories, only in the AUR and the "
           "third-party archzfs repository, which the image does not use: build with --no-zfs "
           "(the data disk then uses BTRFS)",
}


def arch_packages(config: BuildConfig) -> list[str]:
    if config.zfs:
        raise BuildError(f"--base arch: {NOT_IN_ARCH['zfs']}")
    wanted = list(ARCH_BASE)
    if config.sessions:
        wanted += ARCH_GRAPHICAL
    for desktop in config.sessions:
        wanted += ARCH_DESKTOPS[desktop]
    return sorted(set(wanted))
