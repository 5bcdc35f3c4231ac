"""Benchmarks of the A/B update write path (prints figures; not a test).

  .venv/bin/python -m bench.update [--mib 256] [--runs 3]

On a simulated stick (loop device over a file in /var/tmp) with a slot of
the image's size, all in one run and on the same target:
- dd: ``dd bs=4M conv=fsync`` of the image to the slot partition;
- apply: anklumed's write_slot (stream with the dm-verity tree computed
  alongside the write, fsync, O_DIRECT read-back with sha256); "stream" is
  its time to the end of the stream, "write" adds the fsync;
- naive: dd, then sha256sum of the partition, then ``veritysetup format``;
- tree: VerityHasher over the image vs ``veritysetup format`` to a file.
Targets (issue 5): apply >= 0.9x dd, apply >= 2x naive, tree >= 0.8x veritysetup.
Medians of N runs; throughput in MiB/s of image.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from anklumed.jobs import Job
from anklumed.slots import bundle
from anklumed.slots.source import HttpSettings, open_bundle
from anklumed.slots.update import write_slot
from anklumed.slots.verity_tree import VerityHasher, VerityParams
from devtools import stickimg


def timed(fn) -> float:  # type: ignore[no-untyped-def]
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
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="anklume-bench-") as tmp:
        work = Path(tmp)
        image = make_image(work, args.mib)
        manifest = bundle.create_bundle(image, work / "bundle", version="2.0.0",
                                        compatible="bench")
        source = open_bundle(str(work / "bundle" / manifest.image), work, HttpSettings(),
                             time.sleep)
        size_mib = manifest.size / (1 << 20)
        stick = stickimg.build(work / "stick", slot_mib=args.mib + 64, persist_mib=16)
        try:
            target = stick.part(3)
            results = measure(source, image, target, work, args.runs)
        finally:
            stick.detach()
    report(results, size_mib)


def measure(source, image: Path, target: Path, work: Path,  # type: ignore[no-untyped-def]
            runs: int) -> dict[str, list[float]]:
    tree_file = work / "tree"
    results: dict[str, list[float]] = {k: [] for k in
                                       ("dd", "apply", "stream", "write", "naive", "tree",
                                        "veritysetup")}

    async def apply() -> tuple[float, float, float]:
        phases: dict[str, float] = {}
        job = Job(1, "bench", asyncio.get_running_loop(), lambda _j: None)
        report_progress = job.progress

        def progress(phase: str, done: int = 0, total: int = 0) -> None:
            phases.setdefault(phase, time.perf_counter())
            report_progress(phase, done, total)

        job.progress = progress  # type: ignore[method-assign]
        start = time.perf_counter()
        await asyncio.to_thread(write_slot, job, source, target)
        end = time.perf_counter()
        return (end - start, phases.get("syncing", end) - start,
                phases.get("verifying", end) - start)

    for _ in range(runs):
        drop_caches()
        results["dd"].append(timed(lambda: sh("dd", f"if={image}", f"of={target}", "bs=4M",
                                              "conv=fsync", "status=none")))
        drop_caches()
        total, stream, write = asyncio.run(apply())
        results["apply"].append(total)
        results["stream"].append(stream)
        results["write"].append(write)
        drop_caches()
        results["naive"].append(timed(lambda: (
            sh("dd", f"if={image}", f"of={target}", "bs=4M", "conv=fsync", "status=none"),
            sh("sha256sum", target),
            sh("veritysetup", "format", target, tree_file))))
        drop_caches()
        results["veritysetup"].append(timed(lambda: sh("veritysetup", "format", image,
                                                       tree_file)))
        drop_caches()
        results["tree"].append(timed(lambda: hash_tree(image)))
    return results


def hash_tree(image: Path) -> None:
    hasher = VerityHasher(VerityParams(salt=os.urandom(32)))
    with image.open("rb") as f:
        while chunk := f.read(4 << 20):
            hasher.update(chunk)
    hasher.finish()


def report(results: dict[str, list[float]], size_mib: float) -> None:
    median = {k: statistics.median(v) for k, v in results.items()}
    rate = {k: size_mib / v for k, v in median.items()}
    caches = "dropped before each step" if CACHES_DROPPED[0] else "NOT dropped (not allowed here)"
    print(f"image: {size_mib:.0f} MiB; page cache {caches}")
    for name in ("dd", "apply", "stream", "write", "naive", "tree", "veritysetup"):
        print(f"  {name:12} {median[name]:7.3f} s  {rate[name]:8.1f} MiB/s")
    print(f"apply vs dd:             {median['dd'] / median['apply']:.2f}x  (target >= 0.9)")
    print(f"apply write phase vs dd: {median['dd'] / median['write']:.2f}x")
    print(f"apply vs naive pipeline: {median['naive'] / median['apply']:.2f}x  (target >= 2)")
    print(f"tree vs veritysetup:     {median['veritysetup'] / median['tree']:.2f}x  "
          "(target >= 0.8)")


if __name__ == "__main__":
    main()
