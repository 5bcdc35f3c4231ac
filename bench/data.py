"""Benchmarks of unlocking the data disk (prints figures; not a test).

  .venv/bin/python -m bench.data [--runs 5] [--unlock-ms 2000]

Unlock-to-mounted, split in its parts, on this machine (no device-mapper
here, so the parts are measured where each can run):
- PBKDF: ``cryptsetup open --test-passphrase`` of a LUKS2 header made by
  anklumed's own luks.format_luks2 (argon2id, memory sized to RAM, the
  configured time): the key derivation, which is the whole cost of opening;
- mount: ``mount -t btrfs -o compress=zstd`` of the data filesystem;
- the rest: ``anklumectl data unlock`` end to end on an unencrypted BTRFS data
  disk through the daemon (CLI start, D-Bus, polkit, job, PERSIST read,
  mount, Incus state bind) minus the mount.
The ratio: unlock to mounted (PBKDF + anklumectl's unlock) against what the
standard tools alone take (PBKDF + mount). ZFS import needs the VM tier,
where TCG makes timings meaningless.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anklumed.data import luks
from bench.machine import cost_line, load
from devtools.simulate import Simulation


def timed(argv: list[str], input: bytes | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, input=input, check=True, capture_output=True)
    return time.perf_counter() - start


def pbkdf(work: Path, unlock_ms: int, runs: int) -> list[float]:
    header = work / "luks.img"
    with header.open("wb") as f:
        f.truncate(32 << 20)
    luks.format_luks2(header, b"bench passphrase", label="bench", iter_time_ms=unlock_ms)
    return [timed(["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(header)],
                  b"bench passphrase") for _ in range(runs)]


def unlock_and_mount(work: Path, runs: int) -> tuple[list[float], list[float]]:
    sim = Simulation(work / "sim").start()

    def ctl(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "anklumectl", *args],
                       env=sim.env, check=True, capture_output=True)

    totals, mounts = [], []
    try:
        ctl("data", "setup", "--disk", str(sim.data_disk), "--fs", "btrfs",
            "--encryption", "none", "--yes")
        for _ in range(runs):
            ctl("data", "lock")
            start = time.perf_counter()
            ctl("data", "unlock")
            totals.append(time.perf_counter() - start)
        ctl("data", "lock")
        target = work / "mnt"
        target.mkdir()
        for _ in range(runs):
            mounts.append(timed(["mount", "-t", "btrfs", "-o", "compress=zstd,noatime",
                                 str(sim.data_disk), str(target)]))
            subprocess.run(["umount", str(target)], check=True)
    finally:
        sim.stop()
    return totals, mounts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--unlock-ms", type=int, default=2000,
                        help="anklumed.toml luks_unlock_ms (default 2000)")
    args = parser.parse_args()
    before = load()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="anklume-bench-") as tmp:
        work = Path(tmp)
        kdf = statistics.median(pbkdf(work, args.unlock_ms, args.runs))
        totals, mounts = unlock_and_mount(work, args.runs)
    total, mount = statistics.median(totals), statistics.median(mounts)
    print(f"before: {before}; after: {load()}")
    print(f"argon2id memory: {luks.argon2_memory_kib() // 1024} MiB, "
          f"luks_unlock_ms={args.unlock_ms}; medians of {args.runs}")
    print(f"  PBKDF (cryptsetup --test-passphrase)   {kdf * 1000:8.0f} ms")
    print(f"  mount (btrfs, compress=zstd)           {mount * 1000:8.0f} ms")
    print(f"  the rest (CLI, bus, job, PERSIST, bind) {(total - mount) * 1000:7.0f} ms")
    print(f"  unlock to mounted, LUKS2 + BTRFS       {(kdf + total) * 1000:8.0f} ms")
    print(cost_line("unlock to mounted", "PBKDF + mount", (kdf + total) * 1000,
                    (kdf + mount) * 1000, "ms"))


if __name__ == "__main__":
    main()
