"""Benchmarks of anklumed, each against a reference measured in the same run
(prints figures; not a test).

  .venv/bin/python -m bench.daemon [--runs 5]

- start: daemon process start -> org.anklume.Live1 owned (includes discovering
  the stick and one PERSIST mount/read/unmount), against a bare dbus-fast
  service that only takes the same name (bench/bare_service.py), started and
  timed the same way, runs interleaved; medians of N runs;
- idle RSS of the daemon 1 s after start, against the bare service's;
- status round trip (GetAll on the manager) against the bus's own floor,
  ``org.freedesktop.DBus.GetId`` (answered by dbus-daemon itself): 100
  concurrent clients each ask 10 times a second, at its own random moment,
  the two calls in turn (so both are timed at the same moments, under the
  same load: a thousand calls a second, far more than tray widgets and CLIs
  make). Three ways: dbus-fast clients spread over 10 processes (as real
  clients are); RawClient, which times the call to the last byte of its
  reply (the daemon and the bus, not the client's unmarshalling); and as a
  burst (each of 100 clients in this one process asks 40 times back to
  back: all 100 always waiting);
- status round trip of one client asking back to back while an update
  writes a 400 MiB image (hashing runs in worker threads: the bus must stay
  responsive), against the same client for 5 s just before the update.
The load average before and after is printed: the machine may be shared.
"""

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from anklumed.service import dbus_fixes  # noqa: F401
from bench.machine import cost_line, load
from devtools.simulate import REPO, Simulation

STATUS_CALL: dict[str, Any] = dict(
    destination="org.anklume.Live1", path="/org/anklume/Live1",
    interface="org.freedesktop.DBus.Properties", member="GetAll", signature="s",
    body=["org.anklume.Live1.Manager"])
# The floor: answered by dbus-daemon itself, no service behind it.
GETID_CALL: dict[str, Any] = dict(
    destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
    interface="org.freedesktop.DBus", member="GetId")


# Each client asks these in turn, so the daemon's figure and the bus's floor
# are measured at the same moments, under the same load.
CALLS: dict[str, dict[str, Any]] = {"status": STATUS_CALL, "GetId": GETID_CALL}
Samples = dict[str, list[float]]


def in_turn(index: int) -> str:
    return list(CALLS)[index % len(CALLS)]


async def round_trips(address: str, clients: int, each: int) -> Samples:
    buses = [await MessageBus(bus_address=address).connect() for _ in range(clients)]
    samples: Samples = {name: [] for name in CALLS}

    async def client(number: int, bus: MessageBus) -> None:
        for i in range(number, number + each):
            t = time.perf_counter()
            await bus.call(Message(**CALLS[in_turn(i)]))
            samples[in_turn(i)].append(time.perf_counter() - t)

    await asyncio.gather(*(client(n, b) for n, b in enumerate(buses)))
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
                seed: int = 2) -> Samples:
    if raw:
        conns: list[Any] = [await RawClient().connect(address) for _ in range(clients)]
    else:
        conns = [await MessageBus(bus_address=address).connect() for _ in range(clients)]
    samples: Samples = {name: [] for name in CALLS}
    rng = random.Random(seed)  # noqa: S311 - spreads the clients, no secret
    if start_at is not None:  # every process starts asking at the same moment
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))

    async def client(number: int, conn: Any) -> None:
        next_at = time.perf_counter() + rng.random() / hz
        end = time.perf_counter() + seconds
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            name = in_turn(number)
            t = time.perf_counter()
            await conn.call(Message(**CALLS[name]))
            samples[name].append(time.perf_counter() - t)
            next_at += 1 / hz
            number += 1

    await asyncio.gather(*(client(n, c) for n, c in enumerate(conns)))
    for c in conns:
        c.close() if raw else c.disconnect()
    return samples


def _paced_worker(address: str, clients: int, hz: float, seconds: float,
                  start_at: float, seed: int) -> Samples:
    return asyncio.run(paced(address, clients, hz, seconds, start_at=start_at, seed=seed))


def paced_processes(address: str, clients: int, hz: float, seconds: float,
                    processes: int) -> Samples:
    """paced() with dbus-fast clients spread over several processes, as real
    clients are (each tray widget and CLI unmarshals its own replies)."""
    # perf_counter is CLOCK_MONOTONIC on Linux: one clock for every process.
    start_at = time.perf_counter() + 5.0  # after every worker has imported and connected
    per = clients // processes
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as ex:
        runs = [ex.submit(_paced_worker, address, per, hz, seconds, start_at, seed)
                for seed in range(processes)]
        return {name: [x for run in runs for x in run.result()[name]] for name in CALLS}


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


async def back_to_back(address: str, seconds: float | None) -> list[float]:
    """One client asking for the status, back to back: for ``seconds``, or
    (None) until the update that runs is over."""
    bus = await MessageBus(bus_address=address).connect()
    samples: list[float] = []
    end = time.perf_counter() + (seconds or 3600.0)
    while time.perf_counter() < end:
        t = time.perf_counter()
        reply = await bus.call(Message(**STATUS_CALL))
        samples.append(time.perf_counter() - t)
        assert reply is not None
        last = reply.body[0]["LastUpdate"].value
        if seconds is None and last.get("state") not in (None, "running"):
            assert last["state"] == "succeeded", last
            break
    bus.disconnect()
    return samples


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_reference(sim: Simulation) -> tuple[float, subprocess.Popen[bytes]]:
    """Start bench/bare_service.py as start_daemon starts anklumed; the seconds
    to its bus name, and the process."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_service"], cwd=REPO,
                            env=sim.env)
    while not sim.name_owned():
        if proc.poll() is not None or time.monotonic() - started > 60:
            proc.kill()
            raise SystemExit("the bare dbus-fast service did not take its name")
        time.sleep(0.005)
    return time.monotonic() - started, proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


def pct(samples: list[float], q: float) -> float:
    """The q quantile of ``samples`` (sorted), in ms."""
    return samples[min(len(samples) - 1, int(q * len(samples)))] * 1000


def latency_lines(name: str, reference: str, ours: list[float], theirs: list[float]) -> str:
    ours, theirs = sorted(ours), sorted(theirs)
    return "\n".join(cost_line(f"{name} p{q * 100:.0f}", f"{reference} p{q * 100:.0f}",
                                pct(ours, q), pct(theirs, q), "ms") for q in (0.5, 0.99)) + \
        f"  ({len(ours)} and {len(theirs)} asked)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    before = load()
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        sim = Simulation(Path(tmp) / "sim", slot_mib=448).start()
        try:
            starts, bare_starts = [], []
            for _ in range(args.runs):
                sim.stop_daemon()
                took, bare = start_reference(sim)
                bare_starts.append(took)
                time.sleep(1)
                bare_rss = rss_mb(bare.pid)
                stop(bare)
                starts.append(sim.start_daemon())
            time.sleep(1)
            assert sim.daemon is not None
            rss = rss_mb(sim.daemon.pid)
            address = sim.bus.address
            spread = paced_processes(address, 100, 10.0, 10.0, processes=10)
            wire = asyncio.run(paced(address, 100, 10.0, 10.0, raw=True))
            burst = asyncio.run(round_trips(address, 100, 40))
            figures["status idle"] = asyncio.run(back_to_back(address, 5.0))
            start_update(sim, Path(tmp))
            figures["status busy"] = asyncio.run(back_to_back(address, None))
        finally:
            sim.stop()
    print(f"before: {before}; after: {load()}")
    print(cost_line("start to bus name", "bare dbus-fast service",
                    statistics.median(starts) * 1000, statistics.median(bare_starts) * 1000,
                    "ms") + f"  (medians of {args.runs}; anklumed's runs: "
          f"{', '.join(f'{s * 1000:.0f}' for s in starts)} ms)")
    print(cost_line("idle RSS", "bare dbus-fast service", rss, bare_rss, "MB"))
    print("status round trip against GetId (the bus's floor), 100 clients asking 10 times "
          "a second, the two calls in turn:")
    print(latency_lines("  dbus-fast clients in 10 processes", "GetId",
                        spread["status"], spread["GetId"]))
    print(latency_lines("  reply read, not unmarshalled", "GetId", wire["status"], wire["GetId"]))
    print(latency_lines("  burst, 100 clients x 40 back to back", "GetId",
                        burst["status"], burst["GetId"]))
    print(latency_lines("status round trip during a 400 MiB update", "the same before it",
                        figures["status busy"], figures["status idle"]))


if __name__ == "__main__":
    main()
