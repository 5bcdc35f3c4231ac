"""The mkinitcpio (Arch) integration, run without Arch.

mkinitcpio's build functions (add_module, add_binary, add_file, ...) are
stood in for by recorders (bash, as mkinitcpio runs install hooks); the
runtime hook runs under busybox sh, as in the initramfs. What can only be
checked on Arch (an image actually built and booted) is not claimed here:
the boot itself is the shared anklume-boot.sh the initramfs-tools image
boots in tests/vm/test_boot.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "initramfs" / "mkinitcpio" / "install" / "anklume"
HOOK = REPO / "initramfs" / "mkinitcpio" / "hooks" / "anklume"

RECORDERS = """
add_module() { echo "module $1"; }
add_checked_modules() { echo "modules $1"; }
add_binary() { command -v "$1" >/dev/null || { echo "missing binary $1"; return 1; }
               echo "binary $1"; }
add_file() { [ -e "$1" ] || { echo "missing file $1"; return 1; }; echo "file $1 -> ${2:-$1}"; }
add_runscript() { echo runscript; }
"""


def run_build(tmp_path: Path, keys: list[str], busybox: str = "/nonexistent") -> list[str]:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("anklume-boot.sh", "anklume-redirect.sh", "anklume-shutdown.sh"):
        shutil.copy2(REPO / "initramfs" / name, src / name)
    (src / "anklume-state.sh").write_text("#!/bin/sh\n")  # its content is decide's
    keys_dir = tmp_path / "keys.d"
    keys_dir.mkdir()
    for key in keys:
        (keys_dir / key).write_text("-----BEGIN PUBLIC KEY-----\n")
    buildroot = tmp_path / "root"
    (buildroot / "lib" / "anklume").mkdir(parents=True)
    script = f"set -e\n{RECORDERS}\nsource {INSTALL}\nbuild\n"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "BUILDROOT": str(buildroot),
                               "ANKLUME_INITRAMFS_SRC": str(src),
                               "ANKLUME_KEYS_DIR": str(keys_dir), "ANKLUME_BUSYBOX": busybox})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def test_the_install_hook_adds_the_shared_boot_its_tools_modules_and_keys(
        tmp_path: Path) -> None:
    lines = run_build(tmp_path, ["builder.pem", "second.pem"])
    for name in ("anklume-boot.sh", "anklume-state.sh", "anklume-redirect.sh",
                 "anklume-shutdown.sh"):
        assert f"file {tmp_path}/src/{name} -> /lib/anklume/{name}" in lines
    for binary in ("veritysetup", "dmsetup", "blkid", "openssl", "chattr"):
        assert f"binary {binary}" in lines
    for module in ("dm_verity", "squashfs", "overlay", "loop", "ext4", "efivarfs",
                   "usb_storage", "uas", "sd_mod", "sha256_ssse3?"):
        assert f"module {module}" in lines
    assert f"file {tmp_path}/keys.d/builder.pem -> /etc/anklume/keys.d/builder.pem" in lines
    assert f"file {tmp_path}/keys.d/second.pem -> /etc/anklume/keys.d/second.pem" in lines
    assert "runscript" in lines


def test_the_shutdown_finds_dmsetup_where_it_runs_it_with_the_libraries(
        tmp_path: Path) -> None:
    """anklume-shutdown.sh runs /sbin/dmsetup in /run/initramfs, where /sbin
    is a directory: the list must name /sbin/dmsetup (a link to usr/bin in
    mkinitcpio's image), and the libraries a dynamic dmsetup and busybox
    need, or the shutdown exits 127 and the kernel panics."""
    dynamic = subprocess.run(["sh", "-c", "command -v dmsetup"], capture_output=True,
                             text=True, check=True).stdout.strip()
    run_build(tmp_path, [], busybox=dynamic)
    listed = (tmp_path / "root" / "lib" / "anklume" / "shutdown-files").read_text().split()
    assert "/sbin/dmsetup" in listed
    libc = [f for f in listed if "/libc.so" in f]
    devmapper = [f for f in listed if "/libdevmapper.so" in f]
    assert libc and devmapper, listed
    assert all(Path(f).exists() for f in listed if f != "/sbin/dmsetup"), listed
    assert len(listed) == len(set(listed))


def test_without_keys_the_install_hook_adds_none(tmp_path: Path) -> None:
    assert not [line for line in run_build(tmp_path, []) if "keys.d" in line]


@pytest.mark.parametrize(("cmdline_boot", "handler"), [
    ("anklume", "anklume_mount_handler"),
    ("", "default_mount_handler"),
    ("live", "default_mount_handler"),
])
def test_the_runtime_hook_takes_the_root_only_with_boot_anklume(
        cmdline_boot: str, handler: str) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is not installed: run ./setup-dev")
    script = (f"set -u; mount_handler=default_mount_handler; boot='{cmdline_boot}'; "
              f". {HOOK}; run_hook; echo \"$mount_handler\"")
    proc = subprocess.run([busybox, "sh", "-c", script], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == handler
