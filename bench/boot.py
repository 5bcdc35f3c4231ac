"""Benchmarks of the boot (prints figures; not a test). Runs QEMU: take the lock.

  flock /tmp/anklume-heavy.lock .venv/bin/python -m bench.boot [--mib 24] [--runs 3]

Each run boots a stick through our initramfs (tests/vm/test_boot.py's
images, a slot of about MIB MiB of random data) under TCG, once from the
stick and once with anklume.toram=1, and reads the times from the guest's
kernel log (the initramfs's `anklume:` lines and boot-guest-init.sh's first
line share its clock; anklume.test=bench):
- initramfs, all: from the kernel's "Run /init" to the booted system's init
  (udev, module loading, the wait for the stick, our boot, switch_root);
- initramfs, own: from "anklume: found the stick" to the booted system's
  init: PERSIST, the count, the signature, verity, the overlay, the hand-off
  and switch_root, without module loading and the device wait (the issue's
  figure), from the stick and with the toram copy;
- toram copy: the initramfs's copy of the slot to RAM (its 64 MiB steps of
  ``dd bs=4M iflag=direct`` and progress lines), against a plain buffered
  ``dd bs=4M`` of the same MiB from the same partition into a tmpfs in the
  same guest, page cache dropped first;
  the ratio of their throughputs is the figure to watch (target >= 0.9);
- verity read: every block of the RAM copy read once through dm-verity
  (what finding a flipped byte at boot, not on read, would add to a copy).
Medians of N runs. TCG makes every absolute figure slower than a real
machine's; the ratios are what carry over.
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
    figures: dict[str, list[float]] = {name: [] for name in (
        "initramfs, all", "initramfs, own", "initramfs, own (toram)", "toram copy", "dd",
        "verity read")}
    for _ in range(args.runs):
        bootimage.build_stick(stick, slot, None, slot_mib=slot_mib)
        plain = boot(kernel, initrd, stick, "anklume.test=bench")
        figures["initramfs, all"].append(seconds(plain, "RUN_INIT", "INIT_STARTED"))
        figures["initramfs, own"].append(seconds(plain, "STICK_FOUND", "INIT_STARTED"))
        toram = boot(kernel, initrd, stick, "anklume.toram=1 anklume.test=bench")
        figures["initramfs, own (toram)"].append(seconds(toram, "STICK_FOUND", "INIT_STARTED"))
        figures["toram copy"].append(seconds(toram, "COPY_START", "COPY_END"))
        figures["dd"].append(seconds(toram, "DD_START", "DD_END"))
        if toram.get("VERITY_READ_RC") != "0":
            raise SystemExit(f"the read through dm-verity failed: {toram}")
        figures["verity read"].append(seconds(toram, "VERITY_READ_START", "VERITY_READ_END"))
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(f"before: {before}; after: {load()}")
    mib = int(toram["DD_MIB"])
    print(f"slot: {slot.manifest.size / 2**20:.1f} MiB of squashfs ({mib} MiB copied), "
          f"{args.runs} runs, medians")
    for name, value in median.items():
        rate = f"  {mib / value:6.1f} MiB/s" if name in ("toram copy", "dd", "verity read") else ""
        print(f"{name:24} {value:6.2f} s{rate}  (runs: "
              f"{', '.join(f'{v:.2f}' for v in figures[name])})")
    print(f"toram copy throughput / dd throughput: {median['dd'] / median['toram copy']:.2f}")
    print(f"verity read / toram copy (time):       "
          f"{median['verity read'] / median['toram copy']:.2f}")

def boot(kernel: Kernel, initrd: Path, stick: Path, cmdline: str) -> dict[str, str]:
    result = bootrun.boot(kernel, initrd, [(bootrun.STICK_SERIAL, stick)], cmdline=cmdline,
                          memory_mb=768, timeout=300)
    if result.report is None:
        raise SystemExit(result.explain())
    return result.report


if __name__ == "__main__":
    main()
