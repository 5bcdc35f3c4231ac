"""The slot's kernel as one file: a unified kernel image (docs/boot-chain.md).

ukify (systemd-ukify, Debian 13) joins systemd-stub, the kernel, the
initramfs just made by update-initramfs, os-release and the kernel version,
inside the image while it is built (a customize hook: nothing is mounted on
the build host). No ``.cmdline``: the boot entries give the command line.
The UKI stays in the image at /usr/lib/anklume/boot/uki.efi, so the slot's
bundle carries its kernel, and the ESP stage copies it out for slot A.

With Secure Boot the build signs this UKI afterwards, on the build host
(secure_boot.py): the private key never enters the image's tree.
"""

from __future__ import annotations

from anklumed.slots.boot_entries import UKI_IN_IMAGE

STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"  # systemd-boot-efi

# Run by mmdebstrap with the root as $1; exactly one kernel is installed.
_SCRIPT = (
    'set -e; '
    'v=$(cd /boot && ls vmlinuz-* | sed "s/^vmlinuz-//"); '
    '[ "$(echo "$v" | wc -l)" = 1 ] || { echo "expected one kernel in /boot: $v" >&2; exit 1; }; '
    f'mkdir -p /{UKI_IN_IMAGE.rsplit("/", 1)[0]}; '
    'ukify build --linux="/boot/vmlinuz-$v" --initrd="/boot/initrd.img-$v" '
    f'--uname="$v" --os-release=@/etc/os-release --stub={STUB} --output=/{UKI_IN_IMAGE}'
)


def uki_hooks() -> list[str]:
    """After update-initramfs: the UKI, made inside the image."""
    from shlex import quote

    return [f'chroot "$1" sh -c {quote(_SCRIPT)}']
