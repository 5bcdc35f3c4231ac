"""Stage ``rootfs`` for ``--base arch``: the OS as a tarball, made by pacstrap.

The same tarball as the Debian stage gives (rootfs.py), so every later
stage is shared: pacstrap installs the packages (packages.ARCH_BASE) into a
directory with pacman and the configuration of pacman.py, then install.py's
customize hooks put anklume Live's files in, the boot files are copied out,
and the tree is packed with tar. It all runs in one shell script inside a
mount and PID namespace of its own (``unshare``): the /proc, /sys and /dev
that pacstrap and the hooks mount in the tree are never seen by the host.

Never run here against Arch's mirror (none is reachable from the machines
this was written on): what has run is said in docs/arch.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
from pathlib import Path

from anklume_image import install, pacman
from anklume_image.config import BuildConfig
from anklume_image.errors import BuildError
from anklume_image.packages import arch_packages
from anklume_image.rootfs import UKI_DIR_IN_IMAGE
from anklumed.command import run

ROOTFS_TIMEOUT = 3600.0
HOST_TOOLS = {
    "pacstrap": "arch-install-scripts", "pacman": "pacman-package-manager",
    "pacman-key": "pacman-package-manager", "gpg": "gpg", "unshare": "util-linux",
    "tar": "tar",
}
INSTALL_HINT = ("on Debian 12 or later: apt-get install arch-install-scripts "
                "pacman-package-manager archlinux-keyring")

# mmdebstrap's special hook commands, as shell functions over the tree $root
# (install.py's hooks are written for mmdebstrap).
_HOOK_COMMANDS = r'''
copy-in() { cp -R --preserve=mode,timestamps -- "${@:1:$#-1}" "$root${!#}/"; }
upload() { cp --preserve=mode,timestamps -- "$1" "$root$2"; }
sync-out() { mkdir -p "$2"; cp -R --preserve=mode,timestamps -- "$root$1"/. "$2"/; }
'''


def preflight(config: BuildConfig, euid: int | None = None) -> str:
    """Everything that can be refused before any build work: the package
    list (ZFS), root, the host's tools and keyring, the mirror. Returns the
    mirror's pacman Server line."""
    arch_packages(config)
    if (os.geteuid() if euid is None else euid) != 0:
        raise BuildError("--base arch builds as root: pacstrap mounts /proc, /sys and /dev "
                         "in the tree (in a mount namespace of its own; the host's mounts "
                         "do not change)")
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        raise BuildError(f"--base arch needs {', '.join(missing)} on the build host; "
                         f"{INSTALL_HINT}")
    if not pacman.ARCH_KEYRING.exists():
        raise BuildError(f"--base arch verifies Arch's packages with {pacman.ARCH_KEYRING}, "
                         f"which is not there; {INSTALL_HINT}")
    server = pacman.server_line(config.mirror)
    pacman.check_mirror(server, config.arch)
    return server


def keyring_cache(config: BuildConfig) -> Path:
    digest = hashlib.sha256()
    for path in sorted(pacman.ARCH_KEYRING.parent.glob("archlinux*")):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return config.cache_dir / f"arch-gnupg-{digest.hexdigest()[:16]}"


def build_script(config: BuildConfig, work: Path, checkout: Path,
                 public_key: Path | None = None) -> str:
    """The shell script that makes ``work/rootfs.tar`` (run in namespaces)."""
    q = shlex.quote
    root, boot = work / "arch-root", work / "boot-files"
    hooks = install.customize_hooks(config, checkout, public_key)
    lines = [
        "set -euo pipefail",
        f"root={q(str(root))}",
        f"gnupg={q(str(work / 'gnupg'))}",
        _HOOK_COMMANDS,
        "cd /",  # pacman takes a name that is also a file here for a package file
        'mkdir -p "$root"',
        # The keyring that verifies the packages: Arch's keys as this host
        # has them, populated once (15 s) and kept by the keyring's hash.
        # Each build populates its own copy and the first to finish keeps
        # it: two builds at once (the service tier's two workers) shared one
        # directory, and gpg's trust database broke under them.
        f"keyring={q(str(keyring_cache(config)))}",
        'if [ ! -d "$keyring" ]; then',
        '    part=$(mktemp -d "$keyring.part.XXXXXX")',
        '    pacman-key --gpgdir "$part" --init',
        '    pacman-key --gpgdir "$part" --populate archlinux',
        '    gpgconf --homedir "$part" --kill all || true',
        '    mv -T "$part" "$keyring" 2>/dev/null || rm -rf "$part"',
        'fi',
        'cp -a "$keyring" "$gnupg"',
        # -c: the cache of the configuration (kept between builds); -G, -M:
        # nothing of the host's pacman setup goes into the image.
        f"pacstrap -C {q(str(work / 'pacman.conf'))} -c -G -M \"$root\" "
        + " ".join(arch_packages(config)),
        # The chroot the hooks run in, as mmdebstrap gives them theirs.
        'mount -t proc proc "$root/proc"',
        'mount --rbind /sys "$root/sys"',
        'mount --rbind /dev "$root/dev"',
        'mount -t tmpfs tmpfs "$root/run"',
        'mount -t tmpfs tmpfs "$root/tmp"',
        "ANKLUME_SITE=$(chroot \"$root\" python3 -c "
        "'import sysconfig; print(sysconfig.get_path(\"purelib\"))')",
        'set -- "$root"',
        *hooks,
        f"sync-out /boot {q(str(boot))}",
        f"sync-out /usr/lib/systemd/boot/efi {q(str(boot / 'efi'))}",
        f"sync-out /{UKI_DIR_IN_IMAGE} {q(str(boot / 'uki'))}",
        # lazily: a process a hook left in the chroot must not stop the build
        # (tar's --one-file-system keeps what is still mounted out of the tree)
        'umount --recursive --lazy "$root/proc" "$root/sys" "$root/dev" "$root/run" '
        '"$root/tmp"',
        # As mmdebstrap leaves it: each boot of the live system is a first boot.
        'printf "uninitialized\\n" > "$root/etc/machine-id"',
        install.updated_stamp_hook(),
        f"tar --create --file {q(str(work / 'rootfs.tar.part'))} --directory \"$root\" "
        "--xattrs --xattrs-include='*' --numeric-owner --sort=name --one-file-system "
        '${SOURCE_DATE_EPOCH:+--mtime=@$SOURCE_DATE_EPOCH --clamp-mtime} .',
        f"mv {q(str(work / 'rootfs.tar.part'))} {q(str(work / 'rootfs.tar'))}",
    ]
    return "\n".join(lines) + "\n"


def build_rootfs(config: BuildConfig, work: Path, checkout: Path,
                 public_key: bytes | None = None) -> Path:
    server = preflight(config)
    key_file = None
    if public_key is not None:
        key_file = work / "keys" / "anklume-image.pem"
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_bytes(public_key)
    cache = config.cache_dir / "pacman-pkg"
    cache.mkdir(parents=True, exist_ok=True)
    (work / "pacman.conf").write_text(
        pacman.pacman_conf(server, config.arch, cache, work / "gnupg"))
    script = work / "arch-rootfs.sh"
    script.write_text(build_script(config, work, checkout, key_file))
    env = {}
    if config.source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(config.source_date_epoch)
    proc = run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
                "bash", str(script)], timeout=ROOTFS_TIMEOUT, env=env, check=False)
    output = proc.stdout + proc.stderr
    log_file = work / "rootfs.log"
    log_file.write_bytes(output)
    if proc.returncode != 0:
        text = output.decode(errors="replace")
        raise BuildError(f"{failure_sentence(text, server, arch_packages(config))}; "
                         f"the whole output is in {log_file}")
    return work / "rootfs.tar"


_NOT_FOUND = re.compile(r"^error: target not found: (\S+)", re.MULTILINE)
_UNSIGNED = re.compile(r"^error: (\S+): missing required signature", re.MULTILINE)


def failure_sentence(output: str, server: str, wanted: list[str]) -> str:
    """What pacstrap's output says went wrong, as one sentence."""
    missing = _NOT_FOUND.findall(output)
    if missing and set(missing) >= set(wanted):
        return (f"the repositories at {server} hold none of the image's {len(wanted)} "
                "packages: is it an Arch mirror?")
    if missing:
        return (f"Arch's repositories have no package {', '.join(missing)} (pacman: target "
                "not found): the image's Arch package list (anklume_image/packages.py) "
                "names something Arch does not package, or the mirror is not Arch's")
    unsigned = _UNSIGNED.findall(output)
    if unsigned:
        return (f"pacman refused {len(unsigned)} package(s) without a valid signature "
                f"({', '.join(unsigned[:3])}{', ...' if len(unsigned) > 3 else ''}): "
                f"the mirror {server} does not serve Arch's signed packages")
    if "unknown trust" in output or re.search(r'key "[^"]+" is unknown', output):
        return ("pacman refused a package's signature: this host's archlinux-keyring "
                f"({pacman.ARCH_KEYRING}) does not know its packager's key; a newer "
                "archlinux-keyring is needed")
    if "invalid or corrupted package" in output:
        return f"pacman found a damaged or altered package on the mirror {server}"
    if "failed retrieving file" in output or "failed to synchronize" in output:
        return (f"pacman could not download every file it needs (packages and their "
                f"signatures) from the Arch mirror {server}")
    errors = [line for line in output.splitlines()
              if line.startswith(("error:", "==> ERROR:", "E:"))]
    return f"the Arch rootfs failed ({'; '.join(errors[:3]) or 'no message'})"
