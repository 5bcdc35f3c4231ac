"""The slot's kernel as one file: a unified kernel image (docs/boot-chain.md).

ukify (systemd-ukify, Debian 13; Arch's package has the same name) joins
systemd-stub, the kernel, the initramfs just made (update-initramfs on
Debian, mkinitcpio on Arch), os-release and the kernel version,
inside the image while it is built (a customize hook: nothing is mounted on
the build host). The command lines are in it too: one profile per kind of
boot entry (``boot_entries.profiles``), each with its own ``.cmdline``
(ukify's ``--profile``/``--join-profile``, systemd 257), so that under
Secure Boot the signature covers them and an entry only chooses one
(docs/boot-chain.md).
The UKI stays in the image at /usr/lib/anklume/boot/uki.efi, so the slot's
bundle carries its kernel, and the ESP stage copies it out for slot A.

With Secure Boot the build signs this UKI afterwards, on the build host
(secure_boot.py): the private key never enters the image's tree.
"""

from __future__ import annotations

from shlex import quote

from anklume_image.config import Base
from anklumed.slots.boot_entries import UKI_IN_IMAGE, Profile, profiles

STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"  # systemd-boot-efi
PROFILES_TMP = "/tmp/anklume-uki-profiles"  # inside the image's tree, removed after

# Run in the image's chroot with the root as $1; exactly one kernel is installed.
_ONE_KERNEL = (
    '[ "$(echo "$v" | wc -l)" = 1 ] || '
    '{{ echo "expected one kernel in {where}: $v" >&2; exit 1; }}; '
)
_UKIFY = (
    f'mkdir -p /{UKI_IN_IMAGE.rsplit("/", 1)[0]}; '
    '{profiles}'
    'ukify build --linux="{linux}" --initrd="{initrd}" '
    f'--uname="$v" --os-release=@/etc/os-release --stub={STUB} '
    '{first} {joined} '
    f'--output=/{UKI_IN_IMAGE}; rm -rf {PROFILES_TMP}'
)


def profile_id(index: int) -> str:
    return f"anklume-{index}"


def _profile_args(index: int, profile: Profile) -> str:
    # .profile holds os-release-like lines: ID= (what `@ID` could name) and
    # TITLE= (what a menu would show).
    return (f"--profile={quote(f'ID={profile_id(index)}' + chr(10) + f'TITLE={profile.title}')} "
            f"--cmdline={quote(profile.cmdline)}")


def ukify_profiles(desktops: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """The shell that makes profiles 1.. as PE files of their own (ukify
    puts them in the addon stub), the first profile's arguments and the
    ``--join-profile`` arguments for the UKI's own ukify build."""
    found = profiles(desktops)
    make = f"rm -rf {PROFILES_TMP}; mkdir -p {PROFILES_TMP}; " + "".join(
        f"ukify build {_profile_args(i, p)} --output={PROFILES_TMP}/{i}.efi; "
        for i, p in enumerate(found) if i > 0)
    joined = " ".join(f"--join-profile={PROFILES_TMP}/{i}.efi" for i in range(1, len(found)))
    return make, _profile_args(0, found[0]), joined
# Arch: the kernel beside its modules, and the initramfs mkinitcpio made
# with our hook (install.mkinitcpio_hooks).
ARCH_INITRAMFS = "/boot/initramfs-anklume.img"
ARCH_KERNEL_VERSION = 'v=$(ls /usr/lib/modules); ' + _ONE_KERNEL.format(where="/usr/lib/modules")


def uki_script(base: Base = Base.DEBIAN, desktops: tuple[str, ...] = ()) -> str:
    """The shell run in the image's root that makes the UKI."""
    make, first, joined = ukify_profiles(desktops)
    if base is Base.ARCH:
        return ('set -e; ' + ARCH_KERNEL_VERSION
                + _UKIFY.format(linux="/usr/lib/modules/$v/vmlinuz", initrd=ARCH_INITRAMFS,
                                profiles=make, first=first, joined=joined))
    # Debian: the kernel and update-initramfs's initrd in /boot, by version.
    return ('set -e; v=$(cd /boot && ls vmlinuz-* | sed "s/^vmlinuz-//"); '
            + _ONE_KERNEL.format(where="/boot")
            + _UKIFY.format(linux="/boot/vmlinuz-$v", initrd="/boot/initrd.img-$v",
                            profiles=make, first=first, joined=joined))


def uki_hooks(base: Base = Base.DEBIAN, desktops: tuple[str, ...] = ()) -> list[str]:
    """After the initramfs is made: the UKI, made inside the image."""
    return [f'chroot "$1" sh -c {quote(uki_script(base, desktops))}']
