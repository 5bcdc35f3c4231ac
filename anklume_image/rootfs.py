"""Stage ``rootfs``: the OS as a tarball, made by mmdebstrap from packages.

mmdebstrap runs in its own user and mount namespace (``--mode=unshare``): the
build host mounts nothing. Downloaded packages are kept in a cache keyed by
what decides them (suite, mirror, package list), so a second build of the same
inputs downloads nothing. anklume Live's own files are put in by customize
hooks, and the files the boot partition needs (kernel, initramfs, the
systemd-boot binary) are copied out of the tree before it is packed.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

from anklume_image import install, module_signing, zfs
from anklume_image.config import BuildConfig
from anklume_image.errors import BuildError
from anklume_image.packages import components, debian_packages
from anklumed.command import run
from anklumed.slots.boot_entries import UKI_IN_IMAGE

DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SOURCES_DIR = Path("/etc/apt/sources.list.d")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
UKI_DIR_IN_IMAGE = UKI_IN_IMAGE.rsplit("/", 1)[0]
ROOTFS_TIMEOUT = 3600.0  # zfs-dkms compiles in the chroot: minutes on 2 cores


def host_mirror(sources: Path = SOURCES_DIR, sources_list: Path = Path("/etc/apt/sources.list")
                ) -> str:
    """The Debian mirror this host's apt is configured with (deb822 or one-line)."""
    for path in sorted(sources.glob("*.sources")):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "URIs" and "debian-security" not in value:
                return value.split()[0]
    candidates = [sources_list, *sorted(sources.glob("*.list"))]
    for path in candidates:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[1]:
                return words[1]
    return FALLBACK_MIRROR


def cache_key(config: BuildConfig, mirror: str, packages: list[str]) -> str:
    inputs = "\n".join([config.suite, config.arch, mirror, *components(config), *packages])
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def mmdebstrap_argv(config: BuildConfig, work: Path, checkout: Path,
                    public_key: Path | None = None) -> list[str]:
    mirror = config.mirror or host_mirror()
    packages = debian_packages(config)
    cache = config.cache_dir / "debs" / cache_key(config, mirror, packages)
    cache.mkdir(parents=True, exist_ok=True)
    boot = work / "boot-files"
    (boot / "uki").mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    argv = [
        "mmdebstrap", "--mode=unshare", "--variant=apt", f"--architectures={config.arch}",
        f"--components={','.join(components(config))}",
        f"--include={','.join(packages)}",
        # Keep the downloaded packages until the customize hook has saved them.
        "--skip=download/empty", "--skip=essential/unlink",
        # (mmdebstrap's own commands, such as sync-in, must be a hook of their own)
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
        f"--setup-hook=sync-in {q(str(cache))} /var/cache/apt/archives/",
        # Before zfs-dkms and zfsutils-linux are installed: what their
        # scripts would otherwise make at random (zfs.py).
        *[f"--essential-hook={hook}" for hook in zfs.essential_hooks(config)],
        "--customize-hook=" + f"sync-out /var/cache/apt/archives {q(str(cache))}",
        # DKMS's modules signed for Secure Boot before the initramfs and the
        # UKI are made from the tree (module_signing.py).
        *[f"--customize-hook={hook}" for hook in module_signing.customize_hooks(config)],
        *[f"--customize-hook={hook}"
          for hook in install.customize_hooks(config, checkout, public_key)],
        *[f"--customize-hook={hook}" for hook in zfs.customize_hooks(config)],
        "--customize-hook=" + f"sync-out /boot {q(str(boot))}",
        "--customize-hook=" + f"sync-out /usr/lib/systemd/boot/efi {q(str(boot / 'efi'))}",
        "--customize-hook=" + f"sync-out /{UKI_DIR_IN_IMAGE} {q(str(boot / 'uki'))}",
        "--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb",
        "--customize-hook=" + install.updated_stamp_hook(),
    ]
    if DEBIAN_KEYRING.exists():
        argv.append(f"--keyring={DEBIAN_KEYRING}")
    return [*argv, config.suite, str(work / "rootfs.tar"), mirror]


def build_rootfs(config: BuildConfig, work: Path, checkout: Path,
                 public_key: bytes | None = None) -> Path:
    key_file = None
    if public_key is not None:
        key_file = work / "keys" / "anklume-image.pem"
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_bytes(public_key)
    env = {}
    if config.source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(config.source_date_epoch)
    argv = mmdebstrap_argv(config, work, checkout, key_file)
    proc = run(argv, timeout=ROOTFS_TIMEOUT, env=env, check=False)
    log_file = work / "rootfs.log"
    log_file.write_bytes(proc.stderr)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.decode(errors="replace").splitlines()
                  if line.startswith(("E:", "W:"))]
        raise BuildError(f"mmdebstrap failed ({'; '.join(errors[:3]) or 'no message'}); "
                         f"its whole output is in {log_file}")
    return work / "rootfs.tar"
