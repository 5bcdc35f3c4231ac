"""The guests the VM tier boots: what each mode has plugged in and set up.

plain:   a busybox init that chroots into the overlay; tests plug their own
         disks (guestctl) or use loop devices, which this kernel partitions.
systemd: systemd as PID 1 with anklume Live's units, bus policy and polkit
         policy installed (prepare.sh), and a simulated boot stick built here
         plugged in as a USB disk, booted "from" slot A as the command line says.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from devtools import stickimg
from devtools.vm.guest import RUN_PARENT, Disk, Guest, Result

STICK_SERIAL = "anklume-stick"


def build_stick_image(dest_dir: Path, slot_mib: int = 32) -> Path:
    """A populated stick image file (loop device detached again)."""
    stick = stickimg.build(dest_dir, slot_mib=slot_mib)
    stick.detach()
    return stick.image


def run(mode: str, command: Sequence[str], env: dict[str, str] | None = None,
        timeout: float = 900.0, console: IO[str] | None = None,
        files: dict[str, str] | None = None, keep_stick: Path | None = None) -> Result:
    """Boot a guest of ``mode`` running ``command``.

    ``files`` go to the run directory (``anklumed.toml`` and ``units/*.service``
    are installed by prepare.sh); ``keep_stick`` receives the stick image
    after the run, for a test to inspect what the guest left on it.
    """
    if mode == "plain":
        return Guest(command, mode="plain", env=env or {}, timeout=timeout,
                     console=console, files=files or {}).run()
    if mode != "systemd":
        raise ValueError(f"no guest mode {mode!r}")
    workdir = Path(tempfile.mkdtemp(prefix="anklume-vm-stick-", dir=RUN_PARENT))
    try:
        image = build_stick_image(workdir)
        guest = Guest(command, mode="systemd", env=env or {}, timeout=timeout,
                      console=console, disks=[Disk(STICK_SERIAL, image, "usb")],
                      cmdline="anklume.slot=A",
                      files=files or {})
        result = guest.run()
        if keep_stick is not None:
            shutil.move(image, keep_stick)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def read_persist_file(image: Path, name: str) -> str:
    """Read a file of the image's PERSIST partition with debugfs, without mounting."""
    loop = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["partx", "-a", loop], check=True)
        return subprocess.run(["debugfs", "-R", f"cat /{name}", f"{loop}p4"],
                              capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["partx", "-d", loop], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)
