"""anklume Live's own files in the image, as mmdebstrap customize hooks.

The daemon and the CLI run on the distribution's Python and python3-*
packages: their source trees go to dist-packages (no pip, no virtualenv), with
the three entry points as small scripts. Units, the bus policy and the polkit
policy go where a Debian package would put them, and the units are enabled.
The initramfs gets the boot half (initramfs/) through its initramfs-tools
hook, with the public key that verifies slot manifests.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from anklume_image import cli_docs, uki
from anklume_image.config import BuildConfig

DIST_PACKAGES = "/usr/lib/python3/dist-packages"
# The project's Python packages the system runs (anklumectl stands on the
# client library): copied whole into dist-packages.
PYTHON_PACKAGES = ("anklumed", "anklumectl", "anklume_client")
ENTRY_POINTS = {
    "anklumed": "anklumed.main",
    "anklumectl": "anklumectl.main",
    "anklume-bundle": "anklumed.bundle_tool",
}
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


def python_hooks(checkout: Path) -> list[str]:
    sources = " ".join(_q(checkout / p) for p in PYTHON_PACKAGES)
    installed = " ".join(f"{DIST_PACKAGES}/{p}" for p in PYTHON_PACKAGES)
    in_root = " ".join(f"\"$1\"{DIST_PACKAGES}/{p}" for p in PYTHON_PACKAGES)
    hooks = [f"copy-in {sources} {DIST_PACKAGES}",
             # What the checkout's editable install or tests left behind.
             f"find {in_root} -name __pycache__ -prune -exec rm -rf {{}} +"]
    hooks += [_entry_point(name, module) for name, module in ENTRY_POINTS.items()]
    hooks.append(f"chroot \"$1\" python3 -m compileall -q {installed}")
    return hooks


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


def cli_docs_hooks(out: Path) -> list[str]:
    """anklumectl's shell completions and man page: made from its parser now, on
    the build host (shtab, argparse-manpage), then copied to their places."""
    hooks = []
    for path in cli_docs.write(out).values():
        target = "/" + str(path.parent.relative_to(out))
        hooks += [f"mkdir -p \"$1\"{target}", f"copy-in {_q(path)} {target}"]
    return hooks


def key_hooks(public_key: Path | None) -> list[str]:
    hooks = ["mkdir -p \"$1\"/etc/anklume/keys.d"]
    if public_key is not None:
        hooks.append(f"upload {_q(public_key)} /etc/anklume/keys.d/{PUBLIC_KEY_NAME}")
    return hooks


def initramfs_hooks(checkout: Path) -> list[str]:
    src = checkout / "initramfs"
    scripts = " ".join(_q(p) for p in sorted(src.glob("anklume-*.sh")))
    return [
        f"mkdir -p \"$1\"{INITRAMFS_LIB}",
        f"copy-in {scripts} {INITRAMFS_LIB}",
        f"copy-in {_q(src / 'initramfs-tools' / 'hooks' / 'anklume')} "
        "/usr/share/initramfs-tools/hooks",
        f"copy-in {_q(src / 'initramfs-tools' / 'scripts' / 'anklume')} "
        "/usr/share/initramfs-tools/scripts",
        "chroot \"$1\" update-initramfs -u -k all",
        *uki.uki_hooks(),
    ]


def customize_hooks(config: BuildConfig, checkout: Path,
                    public_key: Path | None = None) -> list[str]:
    return [*python_hooks(checkout), *system_hooks(checkout), *key_hooks(public_key),
            *cli_docs_hooks(config.work_dir / "cli-docs"), *initramfs_hooks(checkout)]
