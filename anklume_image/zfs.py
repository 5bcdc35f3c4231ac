"""ZFS in the Debian image, the same at every build of the same packages.

zfs-dkms compiles the module in the image's chroot while apt installs it;
what the packages' scripts add around that compile made two builds with
the same packages and SOURCE_DATE_EPOCH differ (README, "Measurements":
the files that differed, and why). Each hook here takes away one cause,
and says which:

- zfsutils-linux's postinst writes a random /etc/hostid (zgenhostid) when
  there is none: a fixed one is written before it runs;
- DKMS signs the module with a key it makes at random the first time
  (/var/lib/dkms/mok.key and mok.pub), so the module's signature and the
  key pair differed, and the private key was shipped in the image (a build
  with a Secure Boot key signs the modules itself: module_signing.py);
- DKMS keeps the build's make.log (the date of the build, then the
  compiler's output of a parallel make, in whatever order the jobs ran).
"""

from __future__ import annotations

import shlex

from anklume_image.config import BuildConfig

# What `hostid` prints on anklume Live ("ankl"). The pool's last host is
# recorded in the pool: with one hostid for every build, the data pool a
# slot A system left imported is not "in use from another system" for the
# slot B that an update brings (a new build), which a random hostid per
# build would make it, and `zpool import` without -f would refuse it.
HOSTID = 0x616E6B6C
# DKMS reads its settings from every file of this directory (framework.conf.d).
DKMS_SETTINGS = "/etc/dkms/framework.conf.d/anklume.conf"
# DKMS signs only with a sign-file program it finds: a path where none is
# means "modules won't be signed", and no key pair is made. An unsigned
# module loads as the randomly signed one did: the kernel knew neither key
# (it was enrolled nowhere), so under Secure Boot's lockdown neither would;
# with --secure-boot-key the build signs them with the db key after DKMS
# (module_signing.py), and they load.
NO_SIGN_FILE = "/nonexistent/anklume-image-signs-no-dkms-module"
DKMS_SETTINGS_TEXT = (
    "# anklume Live (anklume_image/zfs.py): DKMS signs no module in the image.\n"
    "# Its key would be made at random at each build (the build would differ\n"
    "# each time) and its private half shipped in the image.\n"
    f"sign_file={NO_SIGN_FILE}\n"
)
# dkms's own tree: /var/lib/dkms/MODULE/VERSION/KERNEL/ARCH/log/make.log
DKMS_LOGS = "/var/lib/dkms/*/*/*/*/log"


def _octal(data: bytes) -> str:
    """``data`` as printf's octal escapes (POSIX sh: no \\x in dash's printf)."""
    return "".join(f"\\{byte:03o}" for byte in data)


def hostid_bytes() -> bytes:
    """/etc/hostid as zgenhostid writes it: four bytes, the host's order (amd64)."""
    return HOSTID.to_bytes(4, "little")


def essential_hooks(config: BuildConfig) -> list[str]:
    """Before apt installs the image's packages (mmdebstrap's essential hooks,
    "$1" the root): what zfsutils-linux's and dkms's scripts then find."""
    if not config.zfs:
        return []
    settings_dir = DKMS_SETTINGS.rsplit("/", 1)[0]
    return [
        f"printf '{_octal(hostid_bytes())}' > \"$1\"/etc/hostid",
        f"mkdir -p \"$1\"{settings_dir} && "
        f"printf '%s' {shlex.quote(DKMS_SETTINGS_TEXT)} > \"$1\"{DKMS_SETTINGS}",
    ]


def customize_hooks(config: BuildConfig) -> list[str]:
    """After every package is installed: the build's log DKMS kept."""
    if not config.zfs:
        return []
    return [f"rm -rf \"$1\"{DKMS_LOGS}"]
