"""Benchmarks of the boot (prints figures; not a test). Runs QEMU: take the lock.

  flock /tmp/anklume-heavy.lock .venv/bin/python -m bench.boot [--mib 24] [--runs 3]

Each run boots a stick through our initramfs (tests/vm/test_boot.py's
images, a slot of about MIB MiB of random data) under TCG, once from the
stick and once with anklume.toram=1, and reads the times from the guest's
kernel log and /proc/uptime (boot-guest-init.sh, anklume.test=bench):
- initramfs: from the kernel's "Run /init" to the booted system's init
  (everything the initramfs does, udev included, to switch_root);
- toram copy: the initramfs's copy of the slot to RAM (its 64 MiB dd steps
  and progress lines), against a plain ``dd bs=4M`` of the same MiB from the
  same partition into a tmpfs in the same guest, page cache dropped first.
Medians of N runs. The ratio is what to watch: TCG makes every absolute
figure slower than a real machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from anklumed.slots import bundle
from bench.machine import load
from devtools.vm import bootimage, bootrun
from devtools.vm.guest import RUN_PARENT
from devtools.vm.kernel import Kernel, ensure_kernel


def seconds(report: dict[str, str], start: str, end: str) -> float:
    return float(report[end]) - float(report[start])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.boot")
    parser.add_argument("--mib", type=int, default=24, help="random data in the slot image")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    before = load()
    work = Path(tempfile.mkdtemp(prefix="anklume-bench-boot-", dir=RUN_PARENT))
    keys = work / "keys"
    keys.mkdir()
    bundle.generate_key(work / "builder.pem").rename(keys / "builder.pem")
    kernel = ensure_kernel()
    initrd = bootimage.build_initramfs(kernel, keys)
    slot = bootimage.make_bundle(work, "1.0.0", work / "builder.pem", filler=args.mib << 20)
    slot_mib = (slot.manifest.size >> 20) + 8
    stick = work / "stick.img"
    figures: dict[str, list[float]] = {"initramfs": [], "initramfs (toram)": [],
                                       "toram copy": [], "dd": []}
    for _ in range(args.runs):
        bootimage.build_stick(stick, slot, None, slot_mib=slot_mib)
        plain = boot(kernel, initrd, stick, "anklume.test=bench")
        figures["initramfs"].append(seconds(plain, "RUN_INIT", "INIT_UPTIME"))
        toram = boot(kernel, initrd, stick, "anklume.toram=1 anklume.test=bench")
        figures["initramfs (toram)"].append(seconds(toram, "RUN_INIT", "INIT_UPTIME"))
        figures["toram copy"].append(seconds(toram, "COPY_START", "COPY_END"))
        figures["dd"].append(seconds(toram, "DD_START", "DD_END"))
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(f"before: {before}; after: {load()}")
    for name, value in median.items():
        print(f"{name:20} {value:6.2f} s  (runs: {', '.join(f'{v:.2f}' for v in figures[name])})")
    print(f"toram copy / dd      {median['toram copy'] / median['dd']:.2f}x "
          f"({slot.manifest.size / 2**20:.1f} MiB)")


def boot(kernel: Kernel, initrd: Path, stick: Path, cmdline: str) -> dict[str, str]:
    result = bootrun.boot(kernel, initrd, [(bootrun.STICK_SERIAL, stick)], cmdline=cmdline,
                          memory_mb=768, timeout=300)
    if result.report is None:
        raise SystemExit(result.explain())
    return result.report


if __name__ == "__main__":
    main()
