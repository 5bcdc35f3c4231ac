"""The boot's modules start loading early, while udev finds the stick.

``anklume-boot.sh --load-modules`` runs ``load_modules`` and nothing else;
initramfs-tools' init-top script and mkinitcpio's early hook start it in the
background only with ``boot=anklume``, without the ``ANKLUME_*`` overrides
the kernel would hand over from its command line. ``sh`` and ``modprobe``
are recorders here (FAKE: they write their arguments and environment to a
file); the image tier sees the early step in a real boot's kernel log.
Recorders on PATH need dash: busybox sh runs its own applets first."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from devtools.slowness import scaled
from tests.unit.test_boot_redirect import INITRAMFS, SHELLS, run_harness

INIT_TOP = INITRAMFS / "initramfs-tools" / "scripts" / "init-top" / "anklume"
EARLY_HOOK = INITRAMFS / "mkinitcpio" / "hooks" / "anklume"
MODULES = "crypto-sha256 ext4 efivarfs loop dm_mod dm_verity squashfs overlay"


def overrides() -> dict[str, str]:
    """Every test override the boot scripts read, as the kernel could hand it over."""
    read = re.findall(r"ANKLUME_[A-Z][A-Z_]*", "".join(
        p.read_text() for p in INITRAMFS.glob("*.sh")))
    return dict.fromkeys(read, "/nowhere")


def recorder(bin_dir: Path, name: str, record: Path) -> None:
    """FAKE ``name``: appends its arguments and ANKLUME_* environment to ``record``."""
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text(f'#!/bin/sh\necho "{name} $* env=$(env | grep -c ^ANKLUME_)" >> {record}\n')
    fake.chmod(0o755)


@pytest.mark.parametrize("shell", SHELLS)
def test_load_modules_mode_loads_the_modules_and_does_nothing_else(
        shell: str, tmp_path: Path) -> None:
    script = (INITRAMFS / "anklume-boot.sh").read_text()
    harness = tmp_path / "harness.sh"
    # FAKE modprobe and step (the real step writes to /dev/kmsg). Anything
    # main did past the early start would fail here: no command line, no PERSIST.
    harness.write_text(script.removesuffix('main "$@"\n')
                       + 'modprobe() { echo "MODPROBE $*"; }\nstep() { echo "STEP $*"; }\n'
                       + 'main --load-modules\necho "rc=$?"\n')
    result = run_harness(shell, harness, {"ANKLUME_CMDLINE": str(tmp_path / "nowhere")})
    assert result.stdout.splitlines() == [f"MODPROBE -qa {MODULES}",
                                          "STEP modules loaded early (in the background)",
                                          "rc=0"], result.stdout + result.stderr


def started(record: Path, expected: list[str]) -> list[str]:
    """What the background start ran (it is not waited for): given time to
    come when it should, a short while to show it does not when it should not."""
    deadline = time.monotonic() + scaled(10 if expected else 1)
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(scaled(0.2))  # a second line, were there one
    return record.read_text().splitlines() if record.exists() else []


def dash() -> str:
    found = shutil.which("dash")
    if found is None:
        pytest.fail("dash is not installed: run ./setup-dev")
    return found


@pytest.mark.parametrize(("boot", "expected"), [
    ("anklume", ["sh /lib/anklume/anklume-boot.sh --load-modules env=0"]),
    ("local", []),
    ("", []),
])
def test_initramfs_tools_init_top_starts_the_modules_only_with_boot_anklume(
        boot: str, expected: list[str], tmp_path: Path) -> None:
    record = tmp_path / "record"
    recorder(tmp_path / "bin", "sh", record)
    # init exports BOOT; the kernel may hand ANKLUME_* words of the command line over.
    proc = subprocess.run([dash(), str(INIT_TOP)], capture_output=True, text=True,
                          timeout=scaled(30), check=False,
                          env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "BOOT": boot,
                               **overrides()})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert started(record, expected) == expected


def test_initramfs_tools_init_top_has_no_prerequisite() -> None:
    proc = subprocess.run([dash(), str(INIT_TOP), "prereqs"], capture_output=True,
                          text=True, timeout=scaled(30), check=True)
    assert proc.stdout.strip() == ""
    assert INIT_TOP.stat().st_mode & 0o111, "init runs init-top scripts: it must be executable"


@pytest.mark.parametrize(("boot", "expected"), [
    ("anklume", ["sh /lib/anklume/anklume-boot.sh --load-modules env=0"]),
    ("live", []),
])
def test_mkinitcpio_early_hook_starts_the_modules_only_with_boot_anklume(
        boot: str, expected: list[str], tmp_path: Path) -> None:
    record = tmp_path / "record"
    recorder(tmp_path / "bin", "sh", record)
    script = f"set -u; boot='{boot}'; . {EARLY_HOOK}; run_earlyhook; echo done"
    proc = subprocess.run([dash(), "-c", script], capture_output=True, text=True,
                          timeout=scaled(30), check=False,
                          env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", **overrides()})
    assert (proc.returncode, proc.stdout.strip()) == (0, "done"), proc.stderr
    assert started(record, expected) == expected
