"""anklumed under the D-Bus fuzzer: RSS and status latency, against idle (prints figures).

  .venv/bin/python -m bench.fuzz_load [--seconds 20]

One simulation; a client asks for the status 20 times a second. First
``--seconds`` idle, then as long again while two fuzzers (devtools/dbus_fuzz.py,
one as root, one as nobody whom polkit denies) call every method with every
case class over and over. The daemon's RSS is sampled every 0.1 s. Printed:
status p50/p99 and RSS, idle (the reference) and under the fuzzers, and
their ratios; RSS once the fuzzers stopped (what stays is what the fuzz left
behind); the load average before and after.
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dbus_fast import Message
from dbus_fast.aio import MessageBus

from bench.daemon import STATUS_CALL, pct, rss_mb
from bench.machine import load
from devtools.simulate import Simulation

REPO = Path(__file__).resolve().parent.parent
HZ = 20.0


async def status_and_rss(address: str, pid: int, seconds: float) -> tuple[list[float],
                                                                            list[float]]:
    """Status round trips at HZ, and the daemon's RSS every 0.1 s, for ``seconds``."""
    bus = await MessageBus(bus_address=address).connect()
    samples: list[float] = []
    rss: list[float] = []
    end = time.perf_counter() + seconds

    async def sample_rss() -> None:
        while time.perf_counter() < end:
            rss.append(rss_mb(pid))
            await asyncio.sleep(0.1)

    async def ask() -> None:
        next_at = time.perf_counter()
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            t = time.perf_counter()
            await asyncio.wait_for(bus.call(Message(**STATUS_CALL)), 30)
            samples.append(time.perf_counter() - t)
            next_at += 1 / HZ

    await asyncio.gather(sample_rss(), ask())
    bus.disconnect()
    return sorted(samples), rss


def fuzzers(sim: Simulation) -> list[subprocess.Popen[bytes]]:
    base = [sys.executable, "-m", "devtools.dbus_fuzz", "--bus", sim.bus.address,
            "--rounds", "300", "--repeat", "1000"]
    return [subprocess.Popen([*base, "--seed", "100"], cwd=REPO, stdout=subprocess.DEVNULL),
            subprocess.Popen([*base, "--seed", "200", "--user", "nobody"], cwd=REPO,
                             stdout=subprocess.DEVNULL)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    before = load()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        sim = Simulation(Path(tmp) / "sim").start()
        try:
            assert sim.daemon is not None
            sim.ctl("data", "lock")  # a job object to fuzz (it fails: no data disk)
            sim.set_polkit("deny")  # for nobody; root skips polkit
            time.sleep(6)  # the first disk scan is over
            idle, idle_rss = asyncio.run(status_and_rss(sim.bus.address, sim.daemon.pid,
                                                        args.seconds))
            running = fuzzers(sim)
            try:
                busy, busy_rss = asyncio.run(status_and_rss(sim.bus.address, sim.daemon.pid,
                                                            args.seconds))
            finally:
                for proc in running:
                    proc.terminate()
                    proc.wait(10)
            time.sleep(2)
            after = rss_mb(sim.daemon.pid)
            alive = sim.daemon.poll() is None
        finally:
            sim.stop()
    print(f"before: {before}; after: {load()}")
    print(f"status round trip, one client at {HZ:.0f}/s, {args.seconds:.0f} s each:")
    print(f"  idle ({len(idle)} asked): p50 {pct(idle, 0.5):.2f} ms, p99 {pct(idle, 0.99):.2f} ms")
    print(f"  under two fuzzers ({len(busy)} asked): p50 {pct(busy, 0.5):.2f} ms, "
          f"p99 {pct(busy, 0.99):.2f} ms")
    print(f"  ratio: p50 {pct(busy, 0.5) / pct(idle, 0.5):.2f}x, "
          f"p99 {pct(busy, 0.99) / pct(idle, 0.99):.2f}x")
    idle_mb = statistics.median(idle_rss)
    print(f"daemon RSS: idle {idle_mb:.1f} MB; under the fuzzers median "
          f"{statistics.median(busy_rss):.1f} MB, max {max(busy_rss):.1f} MB "
          f"(ratio {max(busy_rss) / idle_mb:.2f}x); 2 s after them {after:.1f} MB "
          f"({after / idle_mb:.2f}x)")
    third = max(1, len(busy_rss) // 3)
    print(f"  RSS under the fuzzers, first third {statistics.median(busy_rss[:third]):.1f} MB, "
          f"last third {statistics.median(busy_rss[-third:]):.1f} MB (growth = a leak)")
    print(f"daemon still running: {alive}")


if __name__ == "__main__":
    main()
