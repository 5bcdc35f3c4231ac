"""Benchmarks of anklumed (prints figures; not a test).

  .venv/bin/python -m bench.daemon [--runs 5]

- start: daemon process start -> org.anklume.Live1 owned (includes discovering
  the stick and one PERSIST mount/read/unmount), median of N runs;
- idle RSS of the daemon after start;
- status round trip (GetAll on the manager) with 100 concurrent clients:
  paced (each client asks 10 times a second, at its own random moment: a
  thousand status reads a second, far more than tray widgets and CLIs make)
  and as a burst (each asks 20 times back to back: all 100 always waiting,
  so the figure is 100 x the cost of one answer in this one-process client);
  the paced run is made three times: with dbus-fast clients spread over 10
  processes (as real clients are), with all of them in this one process
  (where they queue behind each other's unmarshalling), and with RawClient,
  which times the same call to the last byte of its reply (the daemon and
  the bus, not this client);
- status round trip of one client while an update writes a 400 MiB image
  (hashing runs in worker threads: the bus must stay responsive).
Targets (issue 2): start <= 300 ms, RSS <= 40 MB, p99 <= 5 ms.
"""

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import struct
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from anklumed.service import dbus_fixes  # noqa: F401
from devtools.simulate import Simulation

STATUS_CALL: dict[str, Any] = dict(
    destination="org.anklume.Live1", path="/org/anklume/Live1",
    interface="org.freedesktop.DBus.Properties", member="GetAll", signature="s",
    body=["org.anklume.Live1.Manager"])


async def round_trips(address: str, clients: int, each: int) -> list[float]:
    buses = [await MessageBus(bus_address=address).connect() for _ in range(clients)]
    samples: list[float] = []

    async def client(bus: MessageBus) -> None:
        for _ in range(each):
            t = time.perf_counter()
            await bus.call(Message(**STATUS_CALL))
            samples.append(time.perf_counter() - t)

    await asyncio.gather(*(client(b) for b in buses))
    for b in buses:
        b.disconnect()
    return samples


class RawClient:
    """Just enough of a D-Bus client to time a round trip: it sends a call and
    reads the reply's bytes without unmarshalling the body. dbus-next's pure
    Python unmarshaller (used before dbus-fast) cost this one-process client
    about 0.4 ms a reply, more than the daemon spends answering; a tray
    widget pays it once, in its own process."""

    async def connect(self, address: str) -> "RawClient":
        path = address.split("path=", 1)[1].split(",")[0]
        self.reader, self.writer = await asyncio.open_unix_connection(path)
        uid = str(os.getuid()).encode().hex().encode()
        self.writer.write(b"\0AUTH EXTERNAL " + uid + b"\r\n")
        assert (await self.reader.readline()).startswith(b"OK")
        self.writer.write(b"BEGIN\r\n")
        self.serial = 0
        await self.call(Message(destination="org.freedesktop.DBus", member="Hello",
                                path="/org/freedesktop/DBus", interface="org.freedesktop.DBus"))
        return self

    async def call(self, msg: Message) -> bytes:
        self.serial += 1
        msg.serial = self.serial
        self.writer.write(msg._marshall(False))
        while True:  # one call at a time: the next return or error is its reply
            head = await self.reader.readexactly(16)
            assert head[:1] == b"l", "a big-endian bus"
            body_len, fields_len = struct.unpack("<I4xI", head[4:16])
            rest = await self.reader.readexactly(-(-fields_len // 8) * 8 + body_len)
            if head[1] == MessageType.ERROR.value:
                raise RuntimeError("the call failed")
            if head[1] == MessageType.METHOD_RETURN.value:
                return head + rest  # (signals, such as NameAcquired, are skipped)

    def close(self) -> None:
        self.writer.close()


async def paced(address: str, clients: int, hz: float, seconds: float,
                raw: bool = False, start_at: float | None = None,
                seed: int = 2) -> list[float]:
    if raw:
        conns: list[Any] = [await RawClient().connect(address) for _ in range(clients)]
    else:
        conns = [await MessageBus(bus_address=address).connect() for _ in range(clients)]
    samples: list[float] = []
    rng = random.Random(seed)  # noqa: S311 - spreads the clients, no secret
    if start_at is not None:  # every process starts asking at the same moment
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))

    async def client(conn: Any) -> None:
        next_at = time.perf_counter() + rng.random() / hz
        end = time.perf_counter() + seconds
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            t = time.perf_counter()
            await conn.call(Message(**STATUS_CALL))
            samples.append(time.perf_counter() - t)
            next_at += 1 / hz

    await asyncio.gather(*(client(c) for c in conns))
    for c in conns:
        c.close() if raw else c.disconnect()
    return samples


def _paced_worker(address: str, clients: int, hz: float, seconds: float,
                  start_at: float, seed: int) -> list[float]:
    return asyncio.run(paced(address, clients, hz, seconds, start_at=start_at, seed=seed))


def paced_processes(address: str, clients: int, hz: float, seconds: float,
                    processes: int) -> list[float]:
    """paced() with dbus-fast clients spread over several processes, as real
    clients are (each tray widget and CLI unmarshals its own replies)."""
    # perf_counter is CLOCK_MONOTONIC on Linux: one clock for every process.
    start_at = time.perf_counter() + 5.0  # after every worker has imported and connected
    per = clients // processes
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as ex:
        runs = [ex.submit(_paced_worker, address, per, hz, seconds, start_at, seed)
                for seed in range(processes)]
        return [x for run in runs for x in run.result()]


def start_update(sim: Simulation, work: Path) -> None:
    from anklumed.slots import bundle
    from devtools import stickimg

    keys = sim.workdir / "keys"  # the simulation's keys_dir
    keys.mkdir(exist_ok=True)
    bundle.generate_key(work / "builder.pem").rename(keys / "builder.pem")
    image = stickimg.make_squashfs(work / "os.squashfs", "2.0.0", 400 << 20)
    m = bundle.create_bundle(image, work / "bundle", version="2.0.0",
                             compatible="anklume-live-amd64", signing_key=work / "builder.pem")
    manifest = work / "bundle" / m.image.replace(".squashfs", ".manifest")
    started = sim.ctl("update", str(manifest), "--no-wait")
    assert started.returncode == 0, started.stderr


async def during_update(sim: Simulation) -> list[float]:
    """One client asking for the status, back to back, while the update runs."""
    bus = await MessageBus(bus_address=sim.bus.address).connect()
    samples: list[float] = []
    while True:
        t = time.perf_counter()
        reply = await bus.call(Message(**STATUS_CALL))
        samples.append(time.perf_counter() - t)
        last = reply.body[0]["LastUpdate"].value
        if last.get("state") not in (None, "running"):
            assert last["state"] == "succeeded", last
            break
    bus.disconnect()
    return samples


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        sim = Simulation(Path(tmp) / "sim", slot_mib=448).start()
        try:
            starts = []
            for _ in range(args.runs):
                sim.stop_daemon()
                starts.append(sim.start_daemon())
            time.sleep(1)
            assert sim.daemon is not None
            rss = rss_mb(sim.daemon.pid)
            samples = sorted(asyncio.run(round_trips(sim.bus.address, 100, 20)))
            steady = sorted(asyncio.run(paced(sim.bus.address, 100, 10.0, 5.0)))
            wire = sorted(asyncio.run(paced(sim.bus.address, 100, 10.0, 5.0, raw=True)))
            spread = sorted(paced_processes(sim.bus.address, 100, 10.0, 5.0, processes=10))
            start_update(sim, Path(tmp))
            busy = sorted(asyncio.run(during_update(sim)))
        finally:
            sim.stop()
    p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000  # noqa: E731
    print(f"start to bus name: median {statistics.median(starts) * 1000:.0f} ms "
          f"(min {min(starts) * 1000:.0f}, max {max(starts) * 1000:.0f}, {args.runs} runs)")
    print(f"idle RSS: {rss:.1f} MB")
    r = lambda q: steady[min(len(steady) - 1, int(q * len(steady)))] * 1000  # noqa: E731
    print(f"status round trip, 100 clients x 10/s ({len(steady)} asked): p50 {r(0.5):.2f} ms, "
          f"p99 {r(0.99):.2f} ms")
    w = lambda q: wire[min(len(wire) - 1, int(q * len(wire)))] * 1000  # noqa: E731
    print(f"  the same, reply read but not unmarshalled ({len(wire)} asked): "
          f"p50 {w(0.5):.2f} ms, p99 {w(0.99):.2f} ms")
    d = lambda q: spread[min(len(spread) - 1, int(q * len(spread)))] * 1000  # noqa: E731
    print(f"  the same, dbus-fast clients in 10 processes of 10 ({len(spread)} asked): "
          f"p50 {d(0.5):.2f} ms, p99 {d(0.99):.2f} ms")
    print(f"status round trip, burst of 100 clients x 20: p50 {p(0.5):.2f} ms, "
          f"p99 {p(0.99):.2f} ms")
    q = lambda x: busy[min(len(busy) - 1, int(x * len(busy)))] * 1000  # noqa: E731
    print(f"status round trip during an update ({len(busy)} asked): p50 {q(0.5):.2f} ms, "
          f"p99 {q(0.99):.2f} ms, max {busy[-1] * 1000:.2f} ms")


if __name__ == "__main__":
    main()
