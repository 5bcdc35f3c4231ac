"""A ``--zfs`` image the same at every build: the hooks of anklume_image/zfs.py,
run by sh on a directory standing for the image's root (no mmdebstrap)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from anklume_image import rootfs, zfs
from anklume_image.config import BuildConfig

KERNEL_TREE = "var/lib/dkms/zfs/2.3.9/6.12.117+deb13-amd64/x86_64"


def config(tmp_path: Path, with_zfs: bool = True) -> BuildConfig:
    return BuildConfig(out=tmp_path / "x.img", zfs=with_zfs, cache_dir=tmp_path / "cache",
                       mirror="http://mirror.example/debian")


def run_hooks(hooks: list[str], root: Path) -> None:
    for hook in hooks:
        subprocess.run(["sh", "-c", hook, "sh", str(root)], check=True)


def image_root(tmp_path: Path) -> Path:
    """What the essential packages leave: /etc, and no DKMS yet."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    return root


def test_the_hostid_is_fixed_before_zfsutils_would_make_one(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    run_hooks(zfs.essential_hooks(config(tmp_path)), root)
    hostid = (root / "etc" / "hostid").read_bytes()
    # zfsutils-linux's postinst runs zgenhostid (random) unless the file has 4 bytes.
    assert len(hostid) == 4
    assert int.from_bytes(hostid, "little") == zfs.HOSTID


def test_dkms_finds_no_signing_program_so_makes_no_key(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    run_hooks(zfs.essential_hooks(config(tmp_path)), root)
    settings = root / zfs.DKMS_SETTINGS.lstrip("/")
    # As dkms reads it (bash, its framework.conf.d sourced): a sign_file that
    # is no executable file, which dkms takes as "modules won't be signed".
    probe = subprocess.run(
        ["bash", "-c", '. "$0"; [[ $sign_file && ! -x $sign_file ]] && echo "$sign_file"',
         str(settings)], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == zfs.NO_SIGN_FILE


def test_the_build_log_dkms_keeps_is_removed_and_the_module_kept(tmp_path: Path) -> None:
    root = image_root(tmp_path)
    tree = root / KERNEL_TREE
    (tree / "log").mkdir(parents=True)
    (tree / "log" / "make.log").write_text("DKMS (dkms-3.2.2) make.log\nThu Dec  3 21:20\n")
    (tree / "module").mkdir()
    (tree / "module" / "zfs.ko.xz").write_bytes(b"module")
    run_hooks(zfs.customize_hooks(config(tmp_path)), root)
    assert not (tree / "log").exists()
    assert (tree / "module" / "zfs.ko.xz").read_bytes() == b"module"


@pytest.mark.parametrize("with_zfs", [True, False])
def test_mmdebstrap_runs_the_hooks_only_with_zfs(tmp_path: Path, with_zfs: bool) -> None:
    built = config(tmp_path, with_zfs)
    argv = rootfs.mmdebstrap_argv(built, tmp_path / "work", Path(__file__).parents[2])
    essential = [a.removeprefix("--essential-hook=") for a in argv
                 if a.startswith("--essential-hook=")]
    customize = [a.removeprefix("--customize-hook=") for a in argv
                 if a.startswith("--customize-hook=")]
    removes_logs = [h for h in customize if zfs.DKMS_LOGS in h]
    assert essential == zfs.essential_hooks(built)
    assert removes_logs == zfs.customize_hooks(built)
    assert bool(essential) == bool(removes_logs) == with_zfs
