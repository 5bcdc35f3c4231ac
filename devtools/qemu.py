"""The start of every QEMU command the tests run: the emulator, TCG, the vCPUs.

QEMU before 8.1 races with a guest that changes its own code on one vCPU
while another vCPU runs it (multi-threaded TCG, one host thread per vCPU):
a Linux guest flipping a static key (text_poke_bp) can leave another vCPU
executing the int3 it put there, and the kernel panics ("Fatal exception in
interrupt", RIP at a jump label such as sched_clock_cpu+0x9). Launchpad bug
2051965; fixed in QEMU 8.1.0 by commit deba78709a ("accel/tcg: Always lock
pages before translation"). With such a QEMU, a guest of several vCPUs runs
them all on one host thread (``-accel tcg,thread=single``): slower, but no
race. ./setup-dev --tests installs a fixed QEMU (Debian 12's is 7.2: it
takes QEMU from bookworm-backports).
"""

from __future__ import annotations

import functools
import re
import subprocess

QEMU = "qemu-system-x86_64"
FIXED_IN = (8, 1)  # deba78709a, "accel/tcg: Always lock pages before translation"


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) from ``qemu-system-x86_64 --version``'s output."""
    found = re.search(r"QEMU emulator version (\d+)\.(\d+)", text)
    if found is None:
        raise ValueError(f"no QEMU version in {text!r}")
    return int(found[1]), int(found[2])


def single_threaded(version: tuple[int, int], cpus: int) -> bool:
    """Whether a guest of ``cpus`` vCPUs must run on one host thread."""
    return cpus > 1 and version < FIXED_IN


@functools.cache
def installed_version() -> tuple[int, int]:
    try:
        proc = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise SystemExit(f"{QEMU} is not installed: run ./setup-dev --tests") from None
    return parse_version(proc.stdout)


def command(cpus: int) -> list[str]:
    """QEMU's argv up to the machine's CPUs (``-cpu max``, ``cpus`` vCPUs);
    the rest (machine, memory, devices) is the caller's."""
    accel = "tcg,thread=single" if single_threaded(installed_version(), cpus) else "tcg"
    return [QEMU, "-accel", accel, "-cpu", "max", "-smp", str(cpus)]


QEMU_IMG = "qemu-img"  # the image tier's per-boot overlays (devtools/image_vm)
