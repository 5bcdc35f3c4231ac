"""Whole-machine power cut during an update: QEMU killed at seeded moments.

Unlike killing the writing process (tests/service/test_update_power_cut.py),
killing QEMU also loses what the guest kernel had not yet written to the
disk: only what anklumed fsynced survives. Each round boots a guest on the
same stick image; the guest reports what the previous cut left, then
updates again, and the host cuts the power a seeded random time after the
update started. The last round runs to the end: the retry succeeds.
Two sticks are cut side by side, each by guests of one CPU (one host core
each, under TCG): 20 cuts in about the time of 10.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from anklumed.slots import bundle
from devtools import stickimg
from devtools.vm import scenarios
from devtools.vm.guest import RUN_PARENT, Disk, Guest

pytestmark = pytest.mark.vm(mode="host")
SEEDS = (5, 6)  # one chain of cuts per stick
CUTS = 10  # per stick
FILLER = 24 << 20  # an image that takes the guest several seconds to write


def test_power_cuts_during_an_update_leave_a_bootable_stick() -> None:
    work = Path(tempfile.mkdtemp(prefix="anklume-power-cut-", dir=RUN_PARENT))
    try:
        manifest, keys = make_bundle(work)
        with ThreadPoolExecutor(len(SEEDS)) as pool:
            chains = [pool.submit(run_rounds, work / f"stick-{seed}", manifest, keys, seed)
                      for seed in SEEDS]
            for chain in chains:
                chain.result()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_bundle(work: Path) -> tuple[Path, Path]:
    keys = work / "keys"
    keys.mkdir()
    bundle.generate_key(work / "builder.pem").rename(keys / "builder.pem")
    squashfs = stickimg.make_squashfs(work / "os.squashfs", "2.0.0", FILLER)
    m = bundle.create_bundle(squashfs, work / "bundle", version="2.0.0",
                             compatible="anklume-live-amd64", signing_key=work / "builder.pem")
    return work / "bundle" / m.image.replace(".squashfs", ".manifest"), keys


def run_rounds(work: Path, manifest: Path, keys: Path, seed: int) -> None:
    image = scenarios.build_stick_image(work, slot_mib=48)
    rng = random.Random(seed)
    delays = [round(rng.uniform(0.0, 6.0), 2) for _ in range(CUTS)]
    for number, delay in enumerate([*delays, None]):
        guest = Guest([sys.executable, "-m", "tests.vm.power_cut_guest", str(manifest),
                       str(keys)], mode="plain", timeout=300, cpus=1,
                      disks=[Disk("anklume-stick", image, "virtio")],
                      cut_power=None if delay is None else ("UPDATE-START", delay))
        result = guest.run()
        where = (f"stick {seed}, round {number} (cut {delay} s after the start): "
                 f"{result.explain()}")
        assert result.rundir.joinpath("report.json").exists(), where
        report = json.loads(result.rundir.joinpath("report.json").read_text())
        # What the previous cut left: valid files, slot A untouched and primary
        # unless the update had finished (then B, ok, with a fresh count).
        assert report["problems"] == [], where
        assert report["version_a"] == "1.0.0" and report["status"]["A"] == "ok", where
        if report["primary"] == "B":
            assert (report["boot_count"], report["status"]["B"]) == (0, "ok"), where
        else:
            assert report["boot_count"] in (0, 1), where
        if delay is None:
            assert result.ok and "done" in report, where
            assert "slot B holds 2.0.0" in report["done"]
        else:
            assert result.power_cut or result.ok, where
        result.discard()
    # And the stick now boots the new system, from a fresh count.
    assert scenarios.read_persist_file(image, "ab-state").strip() == "B"
    assert scenarios.read_persist_file(image, "boot-count").strip() == "0"
