"""The packages of the image, by base and desktop.

Everything anklumed needs comes from the distribution (Debian's python3-*
packages, no pip inside the image), so a security update of the base is an
ordinary rebuild.
"""

from __future__ import annotations

from anklume_image.config import BuildConfig, Desktop

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
    "python3", "python3-dbus-fast", "python3-pydantic", "python3-pyudev", "python3-parted",
    "python3-systemd", "python3-rich", "python3-cryptography", "python3-packaging",
    "python3-requests",
]
DEBIAN_ZFS = ["linux-headers-amd64", "zfs-dkms", "zfsutils-linux"]

# What each desktop adds (seed 000: sway and labwc share foot, fuzzel, the
# keyboard shortcuts; KDE is the large one).
DEBIAN_DESKTOPS: dict[Desktop, list[str]] = {
    Desktop.MINIMAL: [],
    Desktop.SWAY: ["sway", "swaybg", "waybar", "foot", "fuzzel", "mako-notifier", "grim"],
    Desktop.LABWC: ["labwc", "foot", "fuzzel", "mako-notifier", "waybar"],
    Desktop.KDE: ["plasma-desktop", "sddm", "konsole"],
}


def debian_packages(config: BuildConfig) -> list[str]:
    wanted = list(DEBIAN_BASE)
    if config.zfs:
        wanted += DEBIAN_ZFS
    desktops = (
        [d for d in Desktop if d not in (Desktop.ALL, Desktop.MINIMAL)]
        if config.desktop is Desktop.ALL else [config.desktop]
    )
    for desktop in desktops:
        wanted += DEBIAN_DESKTOPS[desktop]
    return sorted(set(wanted))


def components(config: BuildConfig) -> list[str]:
    """zfs-dkms is in contrib (its licence), everything else in main."""
    return ["main", "contrib"] if config.zfs else ["main"]
