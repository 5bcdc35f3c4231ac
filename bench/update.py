"""Benchmarks of the A/B update write path (prints figures; not a test).

  flock /tmp/anklume-heavy.lock .venv/bin/python -m bench.update [--mib 256] [--runs 3]

On a simulated stick (loop device over a file in /var/tmp) with a slot of
the image's size, all in one run and on the same target, each against a
reference made of standard tools:
- apply: anklumed's write_slot (stream with the dm-verity tree computed
  alongside the write, O_DIRECT writes, fsync, O_DIRECT read-back with
  sha256), against ``dd bs=4M conv=fsync`` followed by an O_DIRECT read-back
  of the same bytes hashed by ``openssl dgst -sha256`` (target >= 0.9x: the
  read-back is the one check that catches a fake-capacity stick, so the
  reference makes it too); also against plain dd, and against the naive
  pipeline dd, then ``sha256sum`` of the partition, then ``veritysetup
  format`` (target >= 2x). "stream" is apply's time to the end of the stream,
  "write" adds the fsync;
- tree: VerityHasher over the image (in the page cache) on every core, and
  on one, against ``veritysetup format`` to a file (target >= 1.5x on 2
  cores). Beside it, what a second thread gains this machine now: sha256 of
  the image in two halves on two threads against one thread (1.9x or so on
  an idle 2-core machine, 1x when the other core is busy elsewhere), and
  the CPU time the tree takes on every core (the caller and its helper
  processes) against one core (what the split costs, whatever the load).
Medians of N runs; the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from anklumed.jobs import Job
from anklumed.slots import bundle
from anklumed.slots.bundle import Manifest
from anklumed.slots.source import HttpSettings, open_bundle
from anklumed.slots.update import write_slot
from anklumed.slots.verity_tree import VerityHasher, VerityParams
from bench.machine import cost_line, load, speed_line
from devtools import stickimg


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


CACHES_DROPPED = [True]


def drop_caches() -> None:
    """Each measurement starts cold where the kernel lets us (not in some containers)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        CACHES_DROPPED[0] = False


def sh(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def make_image(directory: Path, mib: int) -> Path:
    """A squashfs of incompressible data, about ``mib`` MiB."""
    content = directory / "content"
    content.mkdir()
    with (content / "random.bin").open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    image = directory / "os.squashfs"
    sh("mksquashfs", content, image, "-noappend", "-comp", "gzip", "-no-progress")
    return image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    before = load()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="anklume-bench-") as tmp:
        work = Path(tmp)
        image = make_image(work, args.mib)
        manifest = bundle.create_bundle(image, work / "bundle", version="2.0.0",
                                        compatible="bench")
        source = str(work / "bundle" / manifest.image)
        size_mib = manifest.size / (1 << 20)
        stick = stickimg.build(work / "stick", slot_mib=args.mib + 64, persist_mib=16)
        try:
            target = stick.part(3)
            results = measure(source, manifest, image, target, work, args.runs)
        finally:
            stick.detach()
    print(f"before: {before}; after: {load()}")
    report(results, size_mib)


FIGURES = ("dd", "dd + read-back", "apply", "stream", "write", "naive", "veritysetup",
           "tree", "tree, 1 core", "sha256, 1 thread", "sha256, 2 threads")


def measure(source: str, manifest: Manifest, image: Path, target: Path, work: Path,
            runs: int) -> dict[str, list[float]]:
    tree_file = work / "tree"
    results: dict[str, list[float]] = {k: [] for k in FIGURES}
    cpu_times: dict[str, list[float]] = {"tree": [], "tree, 1 core": []}
    size, sha256 = manifest.size, manifest.sha256

    async def apply() -> tuple[float, float, float]:
        phases: dict[str, float] = {}
        job = Job(1, "bench", asyncio.get_running_loop(), lambda _j: None)
        report_progress = job.progress

        def progress(phase: str, done: int = 0, total: int = 0) -> None:
            phases.setdefault(phase, time.perf_counter())
            report_progress(phase, done, total)

        job.progress = progress  # type: ignore[method-assign]
        opened = open_bundle(source, work, HttpSettings(), time.sleep)  # closed by write_slot
        start = time.perf_counter()
        await asyncio.to_thread(write_slot, job, opened, target)
        end = time.perf_counter()
        return (end - start, phases.get("syncing", end) - start,
                phases.get("verifying", end) - start)

    def dd() -> None:
        sh("dd", f"if={image}", f"of={target}", "bs=4M", "conv=fsync", "status=none")

    def dd_and_read_back() -> None:
        dd()
        read_back(target, size, sha256)

    def naive() -> None:
        dd()
        sh("sha256sum", target)
        sh("veritysetup", "format", target, tree_file)

    data = image.read_bytes()
    for _ in range(runs):
        drop_caches()
        results["dd"].append(timed(dd))
        drop_caches()
        results["dd + read-back"].append(timed(dd_and_read_back))
        drop_caches()
        total, stream, write = asyncio.run(apply())
        results["apply"].append(total)
        results["stream"].append(stream)
        results["write"].append(write)
        drop_caches()
        results["naive"].append(timed(naive))
        image.read_bytes()  # the tree's figures are of hashing, not of reading: all cached
        results["veritysetup"].append(timed(lambda: sh("veritysetup", "format", image,
                                                       tree_file)))
        for name, cores in (("tree", None), ("tree, 1 core", 1)):
            cpu = cpu_time()
            results[name].append(timed(functools.partial(hash_tree, image, cores)))
            cpu_times[name].append(cpu_time() - cpu)
        results["sha256, 1 thread"].append(timed(lambda: sha256_halves(data, 1)))
        results["sha256, 2 threads"].append(timed(lambda: sha256_halves(data, 2)))
    # What splitting the tree over processes costs in CPU, whatever the load.
    results["tree, CPU time"] = cpu_times["tree"]
    results["tree, 1 core, CPU time"] = cpu_times["tree, 1 core"]
    return results


def read_back(target: Path, size: int, sha256: str) -> None:
    """The reference's read-back of the image's ``size`` bytes: dd with
    O_DIRECT into ``openssl dgst`` (which hashes about three times as fast as
    coreutils' sha256sum here)."""
    dd = subprocess.Popen(["dd", f"if={target}", "iflag=direct,count_bytes", "bs=4M",
                           f"count={size}", "status=none"],
                          stdout=subprocess.PIPE)
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r"], stdin=dd.stdout,
                            capture_output=True, text=True, check=True).stdout.split()[0]
    assert dd.stdout is not None
    dd.stdout.close()
    if dd.wait() != 0:
        raise SystemExit(f"dd read-back of {target} failed")
    if digest != sha256:
        raise SystemExit(f"the reference read back {digest}, not {sha256}")


def cpu_time() -> float:
    """This process's CPU time and its reaped children's (the tree's helpers
    are reaped by finish(); nothing else runs meanwhile)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def hash_tree(image: Path, cores: int | None) -> None:
    hasher = VerityHasher(VerityParams(salt=os.urandom(32)), cores=cores)
    buffer = memoryview(bytearray(4 << 20))  # as apply: one buffer, read into
    with image.open("rb", buffering=0) as f:
        while got := f.readinto(buffer):
            hasher.update(buffer[:got])
    hasher.finish()


def sha256_halves(data: bytes, threads: int) -> None:
    """Hash both halves of ``data``: the machine's gain from a second thread."""
    half = len(data) // 2
    view = memoryview(data)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda part: hashlib.sha256(part).digest(), (view[:half], view[half:])))


def report(results: dict[str, list[float]], size_mib: float) -> None:
    caches = "dropped before each step" if CACHES_DROPPED[0] else "NOT dropped (not allowed here)"
    print(f"image: {size_mib:.0f} MiB; page cache {caches}; medians of "
          f"{len(results['dd'])} runs")
    for name in FIGURES:
        median = statistics.median(results[name])
        print(f"  {name:18} {median:7.3f} s  {size_mib / median:8.1f} MiB/s")
    r = results
    print(speed_line("apply", "dd conv=fsync + O_DIRECT sha256 read-back", r["apply"],
                     r["dd + read-back"], target=0.9))
    print(speed_line("apply", "dd conv=fsync", r["apply"], r["dd"]))
    print(speed_line("apply up to its fsync", "dd conv=fsync", r["write"], r["dd"]))
    print(speed_line("apply", "dd, sha256sum, veritysetup format", r["apply"], r["naive"],
                     target=2))
    print(speed_line("tree", "veritysetup format", r["tree"], r["veritysetup"], target=1.5))
    print(speed_line("tree, 1 core", "veritysetup format", r["tree, 1 core"],
                     r["veritysetup"]))
    print(speed_line("tree", "tree, 1 core", r["tree"], r["tree, 1 core"]))
    print(cost_line("tree's CPU time on every core", "on 1 core",
                    statistics.median(r["tree, CPU time"]),
                    statistics.median(r["tree, 1 core, CPU time"]), "s"))
    print(speed_line("sha256 on 2 threads", "1 thread (what a 2nd core gives now)",
                     r["sha256, 2 threads"], r["sha256, 1 thread"]))


if __name__ == "__main__":
    main()
