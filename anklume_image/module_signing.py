"""DKMS's modules (spl and zfs) signed with the Secure Boot key, in the chroot.

Debian's kernel under Secure Boot is locked down and loads only modules
signed by a key it trusts; the db certificate is one (its ``.platform``
keyring: docs/boot-chain.md, "The ZFS module is signed"). zfs.py has DKMS
sign nothing (its key would be made at random, and shipped), so a build
given ``--secure-boot-key`` signs them itself, in a customize hook that runs
before the one that makes the initramfs and the UKI:

- with the kernel's own ``sign-file`` (Debian's linux-kbuild, there for
  DKMS; reached through ``/usr/lib/modules/KERNEL/build`` as DKMS builds),
  run in the chroot so that it links against the image's own libraries;
- the key and the certificate reach it as open file descriptors
  (``/proc/self/fd/3`` and ``4``), opened by the hook on the build host: the
  private key is never written into the tree (no copy to remove, whatever
  fails), and no argv holds more than a path to it;
- a compressed module is decompressed, signed, and compressed again as
  DKMS compressed it (its options, its time kept): the same file name, so
  depmod's files (which record names, not signatures) stay right;
- both the installed modules (``updates/``) and DKMS's own copies under
  /var/lib/dkms (what ``dkms install`` would put back) are signed.

The signature is PKCS#7 without attributes: the same module and key give the
same bytes (a rebuild stays reproducible). Without a Secure Boot key
nothing is signed, as before.
"""

from __future__ import annotations

import shlex

from anklume_image.config import BuildConfig

KEY_FD, CERT_FD = 3, 4
# What sign-file appends last (scripts/sign-file.c, MODULE_SIG_STRING).
SIGNATURE_MAGIC = b"~Module signature appended~\n"
# DKMS's own default options (dkms, compress_*_opts), so a signed module is
# compressed as the unsigned one was; gzip without the name and time.
XZ_OPTS = "--check=crc32 --lzma2=dict=1MiB"
ZSTD_OPTS = "-q -T0"

# POSIX sh, run in the chroot ("$1": the root, empty there; a directory in
# the unit tests). It fails on the first module it cannot sign, and when it
# finds none: a --zfs build without spl and zfs is broken.
SIGN_SCRIPT = rf"""
set -eu
root=$1
key=/proc/self/fd/{KEY_FD}
cert=/proc/self/fd/{CERT_FD}
magic='{SIGNATURE_MAGIC.decode().rstrip()}'

fail() {{ echo "E: anklume: $*" >&2; exit 1; }}

signed_already() {{ [ "$(tail -c {len(SIGNATURE_MAGIC)} "$1")" = "$magic" ]; }}

# DKMS's modules for kernel $1: the installed ones and DKMS's own copies.
modules_of() {{
    find "$root/usr/lib/modules/$1/updates" "$root"/var/lib/dkms/*/*/"$1"/*/module \
        -type f -name '*.ko*' 2>/dev/null | sort
}}

# $1: a module as DKMS installed it; $2: the kernel's sign-file. Signed
# as a copy, then written back in place: its name, mode and time kept.
sign() {{
    m=$1
    ko=${{m%.ko*}}.ko.anklume-signing
    case $m in
        *.ko) cat "$m" > "$ko" ;;
        *.ko.xz) xz -dc "$m" > "$ko" ;;
        *.ko.zst) zstd -qdc "$m" > "$ko" ;;
        *.ko.gz) gzip -dc "$m" > "$ko" ;;
        *) fail "$m: compressed in a way DKMS does not compress" ;;
    esac
    ! signed_already "$ko" || fail "$m is signed already (DKMS must sign nothing: zfs.py)"
    "$2" sha256 "$key" "$cert" "$ko" || fail "sign-file could not sign $m"
    signed_already "$ko" || fail "sign-file left $m unsigned"
    touch -r "$m" "$ko"
    case $m in
        *.ko) cat "$ko" > "$m" ;;
        *.ko.xz) xz {XZ_OPTS} -c "$ko" > "$m" ;;
        *.ko.zst) zstd {ZSTD_OPTS} -c "$ko" > "$m" ;;
        *.ko.gz) gzip -n -c "$ko" > "$m" ;;
    esac
    touch -r "$ko" "$m"
    rm "$ko"
}}

count=0
for tree in "$root"/usr/lib/modules/*/; do
    kernel=$(basename "$tree")
    sign_file=$root/usr/lib/modules/$kernel/build/scripts/sign-file
    for m in $(modules_of "$kernel"); do
        [ -x "$sign_file" ] || fail "no $sign_file (linux-headers) to sign $m"
        sign "$m" "$sign_file"
        count=$((count + 1))
    done
done
[ "$count" -gt 0 ] || fail "no DKMS module to sign under $root/usr/lib/modules/*/updates"
echo "I: anklume: $count DKMS modules signed for Secure Boot"
"""


def signs_modules(config: BuildConfig) -> bool:
    """Only a ZFS build has DKMS modules; only a Secure Boot key signs them."""
    return config.zfs and config.secure_boot_key is not None


def customize_hooks(config: BuildConfig) -> list[str]:
    """The signing, as a customize hook ("$1" the root): the key and the
    certificate opened here, on the build host, and handed to the chroot's
    sign-file as file descriptors."""
    if not signs_modules(config):
        return []
    assert config.secure_boot_key is not None and config.secure_boot_cert is not None
    key = shlex.quote(str(config.secure_boot_key.absolute()))
    cert = shlex.quote(str(config.secure_boot_cert.absolute()))
    return [f"chroot \"$1\" sh -c {shlex.quote(SIGN_SCRIPT)} sign-dkms-modules '' "
            f"{KEY_FD}<{key} {CERT_FD}<{cert}"]
