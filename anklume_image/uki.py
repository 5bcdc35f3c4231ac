"""The slot's kernel as one file: a unified kernel image (docs/boot-chain.md).

ukify (systemd-ukify, Debian 13; Arch's package has the same name) joins
systemd-stub, the kernel, the initramfs just made (update-initramfs on
Debian, mkinitcpio on Arch), os-release and the kernel version,
inside the image while it is built (a customize hook: nothing is mounted on
the build host). No ``.cmdline``: the boot entries give the command line.
The UKI stays in the image at /usr/lib/anklume/boot/uki.efi, so the slot's
bundle carries its kernel, and the ESP stage copies it out for slot A.

With Secure Boot the build signs this UKI afterwards, on the build host
(secure_boot.py): the private key never enters the image's tree.
"""

from __future__ import annotations

from anklume_image.config import Base
from anklumed.slots.boot_entries import UKI_IN_IMAGE

STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"  # systemd-boot-efi

# Run in the image's chroot with the root as $1; exactly one kernel is installed.
_ONE_KERNEL = (
    '[ "$(echo "$v" | wc -l)" = 1 ] || '
    '{{ echo "expected one kernel in {where}: $v" >&2; exit 1; }}; '
)
_UKIFY = (
    f'mkdir -p /{UKI_IN_IMAGE.rsplit("/", 1)[0]}; '
    'ukify build --linux="{linux}" --initrd="{initrd}" '
    f'--uname="$v" --os-release=@/etc/os-release --stub={STUB} --output=/{UKI_IN_IMAGE}'
)
# Debian: the kernel and update-initramfs's initrd in /boot, by version.
_SCRIPT = ('set -e; v=$(cd /boot && ls vmlinuz-* | sed "s/^vmlinuz-//"); '
           + _ONE_KERNEL.format(where="/boot")
           + _UKIFY.format(linux="/boot/vmlinuz-$v", initrd="/boot/initrd.img-$v"))
# Arch: the kernel beside its modules, and the initramfs mkinitcpio made
# with our hook (install.mkinitcpio_hooks).
ARCH_INITRAMFS = "/boot/initramfs-anklume.img"
ARCH_KERNEL_VERSION = 'v=$(ls /usr/lib/modules); ' + _ONE_KERNEL.format(where="/usr/lib/modules")
_ARCH_SCRIPT = ('set -e; ' + ARCH_KERNEL_VERSION
                + _UKIFY.format(linux="/usr/lib/modules/$v/vmlinuz", initrd=ARCH_INITRAMFS))


def uki_hooks(base: Base = Base.DEBIAN) -> list[str]:
    """After the initramfs is made: the UKI, made inside the image."""
    from shlex import quote

    script = _ARCH_SCRIPT if base is Base.ARCH else _SCRIPT
    return [f'chroot "$1" sh -c {quote(script)}']
