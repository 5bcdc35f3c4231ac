"""Benchmark: the built image's boot to multi-user.target, as shipped (A/B,
signed manifest, dm-verity) against the same kernel and squashfs booted as a
plain root (prints figures; not a test). Runs QEMU: take the lock.

  flock /tmp/anklume-heavy.lock .venv/bin/python -m bench.image_boot [--runs 7] [--image IMG]
  .venv/bin/python -m bench.image_boot --from-log LOG [LOG...]  (runs' printed boots, no QEMU)

One minimal image (no ZFS, small partitions, the shipped compression) is
built once (or ``--image``, with its ``.bundle`` beside it), and booted
``--runs`` times each way, alternating (which way goes first swaps from one
round to the next, so a drift in the host's load falls on both), each boot a
fresh QEMU under OVMF/TCG on a fresh copy of the stick (devtools/image_vm):

- shipped: the menu's "run from the stick" entry of slot A
  (``anklume-3-stick-a.conf``: ``boot=anklume anklume.toram=0``): the
  initramfs finds PERSIST, counts the attempt, checks the slot's signed
  manifest, opens the slot through dm-verity and mounts it under a tmpfs
  overlay; every block userspace reads is then hashed by dm-verity. toram
  is off so that both ways read the stick.
- plain: the same UKI (the same kernel and initramfs), started by an entry of
  the bench's own whose command line has no ``boot=anklume`` and no
  ``anklume.*`` word: ``root=PARTUUID=<ANKLUME-OS-A> rootfstype=squashfs ro
  systemd.volatile=state``. Without ``boot=anklume`` the anklume hook steps
  aside entirely (initramfs-tools sources ``scripts/anklume`` only for it)
  and Debian's own ``local`` script mounts the slot partition itself as /
  (the squashfs sits at its start; its verity tree is on PERSIST), no
  PERSIST, no count, no signature, no dm-verity. There is no stock way to
  put the shipped tmpfs overlay on a root without the anklume hook, so the
  fairest equivalent is a read-only root with a tmpfs on /var
  (``systemd.volatile=state``, made by systemd's fstab generator) -- the
  writable state the overlay would hold; Debian 13 has /tmp on tmpfs
  already, and systemd puts /etc/machine-id on a tmpfs when / is read-only.
  The overlay's own cost (small) is therefore counted in the shipped side's
  overhead: the figure errs against the shipped design.

Both sticks are the same bytes (the bench's entry is on the ESP both ways, so
that anklumed sees the same menu); systemd-boot's one-shot variable picks the
entry (``Machine.choose_entry_once``), as a person at the menu would. Both
ways mask the first-boot wizard (``systemd.mask=`` through SMBIOS): a fresh
stick's first boot would otherwise wait for a person on tty1, and
multi-user.target with it. The units that failed are printed for each
way, so that a userspace doing other work in one way is seen. The plain
way has a tmpfs on /mnt (``systemd.mount-extra=tmpfs:/mnt:tmpfs``):
anklumed makes its PERSIST mount point there and runs as in the shipped way
(without it, it crashed on the read-only root and was restarted, and the
userspace figures did not do the same work); only anklume-boot-check, which
has no hand-off to judge there, and efi.automount fail in the plain way. The
kernel + initramfs figure isolates the initramfs's A/B, signature and
dm-verity work.

The figures are the guest's own (systemd's timestamps, ``systemctl show``):
``kernel -> multi-user``: multi-user.target's ActiveEnterTimestampMonotonic
(the monotonic clock starts with the kernel); ``kernel + initramfs``: when
PID 1 of the real root started (UserspaceTimestampMonotonic: with
initramfs-tools the initramfs is counted in systemd's "kernel" time);
``userspace``: from there to multi-user.target. The firmware and
systemd-boot come before the kernel and load the same UKI both ways: not
counted (systemd's LoaderTimestampMonotonic reads 0 in these guests). Medians, the
spread (min-max), the ratio of the medians with a bootstrap 95 % interval
(resampling the runs of each way), the median of each round's own ratio with
its interval (resampling whole rounds: a round's two boots run back to back,
so a host slower for a while slows both and cancels in their ratio; taken
way by way, that drift widens the interval), and the load average before
and after. The target (issue 14): shipped / plain <= 1.05 for kernel ->
multi-user.
"""

from __future__ import annotations

import argparse
import ast
import logging
import random
import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anklume_image import stick
from anklume_image.build import build
from anklume_image.config import BuildConfig
from anklumed.slots import bundle
from anklumed.slots.esp import MTOOLS_ENV
from bench.machine import load
from devtools.image_vm import Machine

SHIPPED, PLAIN = "shipped", "plain"
SHIPPED_ENTRY = "anklume-3-stick-a.conf"  # the menu's "run from the stick", slot A
PLAIN_ENTRY = "zz-bench-plain-a.conf"  # last in the menu: never the default
ESP, SLOT_A = 1, 2  # partition numbers on the stick
TARGET = 1.05
NO_WIZARD = "systemd.mask=anklume-first-boot.service"
TIMES = ["systemctl", "show", "--property=UserspaceTimestampMonotonic"]
TARGET_TIMES = ["systemctl", "show", "--property=Id,ActiveEnterTimestampMonotonic",
                "basic.target", "multi-user.target"]
BOOT_TIMEOUT = 300.0  # seconds (scaled by the host's slowness); a boot takes about one minute
FIGURES = ("kernel -> multi-user", "kernel + initramfs", "userspace")
# The kernel's log with its own time stamps (the monotonic clock): the
# initramfs's lines (anklume-boot.sh's `say` writes each to /dev/kmsg) and the
# kernel's. Not journalctl's: it stamps the lines journald read from the
# buffer when it started with that time (seen: all at 27 s).
KERNEL_LOG = ["dmesg"]
# Where the kernel + initramfs time goes: (name, the first kernel-log line
# holding this text), and each of the initramfs's "anklume-step: NAME" lines
# (anklume-boot.sh's `step`); a way prints the ones all its boots logged.
MILESTONES = (
    ("the kernel runs /init", "Run /init as init process"),
    ("the stick is attached", "Attached SCSI"),
    ("PERSIST found", "anklume: found the stick"),
    ("the attempt counted", "anklume: slot A, attempt"),
)
STEP = "anklume-step: "
# "[    9.500000] text".
LOG_LINE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")


@dataclass(frozen=True)
class Times:
    """One boot's figures, in seconds."""

    initramfs: float  # kernel start to the real root's PID 1
    multi_user: float  # kernel start to multi-user.target
    steps: dict[str, float]  # MILESTONES the boot logged, kernel start to each

    def figure(self, name: str) -> float:
        return {"kernel -> multi-user": self.multi_user, "kernel + initramfs": self.initramfs,
                "userspace": self.multi_user - self.initramfs}[name]


def build_image(work: Path) -> Path:
    key = work / "signing.pem"
    bundle.generate_key(key)
    return build(BuildConfig.model_validate({
        "out": work / "anklume-live.img", "desktop": "minimal", "zfs": False,
        "efi_mib": 128, "slot_mib": 700, "persist_mib": 32, "signing_key": key,
        "version": "1.0.0"}))


def plain_entry(image: Path) -> str:
    """The bench's entry: slot A's UKI with a command line that leaves the
    anklume hook out (the module docstring says why each word)."""
    return "\n".join([
        "title anklume bench: slot A as a plain root", "sort-key zz-bench",
        "linux /EFI/anklume/slot-a.efi",
        f"options root=PARTUUID={stick.partition_guid(image, SLOT_A)} rootfstype=squashfs ro "
        # A tmpfs on /mnt: anklumed makes its PERSIST mount point there (the
        # shipped overlay gives it a writable /mnt), so that it runs both ways.
        "systemd.volatile=state systemd.mount-extra=tmpfs:/mnt:tmpfs quiet", ""])


def bench_stick(image: Path, work: Path) -> Path:
    """A copy of the image with the plain entry on its ESP (mtools at the
    partition's offset: no loop device)."""
    out = work / "bench.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(out)], check=True)
    offset = stick.partition_starts(out)[ESP] * stick.SECTOR
    subprocess.run(["mcopy", "-i", f"{out}@@{offset}", "-", f"::/loader/entries/{PLAIN_ENTRY}"],
                   check=True, input=plain_entry(out).encode(), capture_output=True,
                   env=MTOOLS_ENV)
    return out


def show(report: dict[str, Any], name: str) -> dict[str, str]:
    result = report["commands"][name]
    if result["rc"] != 0:
        raise SystemExit(f"{name} failed in the guest: {result}")
    return dict(line.partition("=")[::2] for line in result["stdout"].splitlines() if line)


def target_times(report: dict[str, Any]) -> dict[str, int]:
    """Id -> ActiveEnterTimestampMonotonic of each target (systemctl show
    separates units by an empty line)."""
    times: dict[str, int] = {}
    for block in report["commands"]["targets"]["stdout"].split("\n\n"):
        values = dict(line.partition("=")[::2] for line in block.splitlines() if line)
        times[values["Id"]] = int(values["ActiveEnterTimestampMonotonic"])
    return times


def milestones(report: dict[str, Any]) -> dict[str, float]:
    """Seconds from the kernel's start to each of MILESTONES's first line and
    to each step the initramfs logged."""
    steps: dict[str, float] = {}
    for line in report["commands"]["kernel_log"]["stdout"].splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        names = [name for name, text in MILESTONES if text in match[2]]
        if STEP in match[2]:
            names.append(match[2].partition(STEP)[2])
        for name in names:
            steps.setdefault(name, float(match[1]))
    return steps


def check_way(way: str, report: dict[str, Any]) -> None:
    """The boot was the one asked for: the shipped way through the anklume
    initramfs (slot A, verified, from the stick), the plain way without it."""
    env = report["boot_env"]
    if way == SHIPPED:
        wanted = {"SLOT": "A", "VERITY": "signed", "TORAM": "0"}
        if report["entry_selected"] != SHIPPED_ENTRY or env is None or \
                any(env.get(k) != v for k, v in wanted.items()):
            raise SystemExit(f"not the shipped boot: {report['entry_selected']}, {env}")
    elif report["entry_selected"] != PLAIN_ENTRY or env is not None or \
            "boot=anklume" in report["cmdline"]:
        raise SystemExit(f"not the plain boot: {report['entry_selected']}, {env}, "
                         f"{report['cmdline']}")


def stuck(bootdir: Path) -> bool:
    """A boot that will never report: the initramfs's shell (a root it could
    not mount) or a kernel panic, on the console (only to stop waiting)."""
    try:
        console = (bootdir / "console.log").read_text(errors="replace")
    except FileNotFoundError:
        return False
    return "(initramfs)" in console or "Kernel panic" in console


def boot_once(image: Path, work: Path, way: str, n: int,
              keep: Path | None = None) -> tuple[Times, list[str]]:
    rundir = work / f"{way}-{n}"
    machine = Machine(image, rundir, cmdline_extra=NO_WIZARD)
    try:
        machine.choose_entry_once(SHIPPED_ENTRY if way == SHIPPED else PLAIN_ENTRY)
        result = machine.boot(commands={"times": TIMES, "targets": TARGET_TIMES,
                                        "kernel_log": KERNEL_LOG},
                              until="anklumed", cut_after_report=True,
                              report_after="multi-user.target", timeout=BOOT_TIMEOUT,
                              stop_when=stuck)
        if result.report is None:
            raise SystemExit(f"{way} boot {n}: {result.explain()}")
        report = result.report
        check_way(way, report)
        manager = show(report, "times")
        targets = target_times(report)
        if not targets.get("multi-user.target"):
            raise SystemExit(f"{way} boot {n}: multi-user.target was not reached: {report['jobs']}")
        return Times(initramfs=int(manager["UserspaceTimestampMonotonic"]) / 1e6,
                     multi_user=targets["multi-user.target"] / 1e6,
                     steps=milestones(report)), report["failed"]
    finally:
        # The stick and the data disk are gigabytes of sparse file each: one
        # boot's at a time (the console stays for a person, in rundir).
        machine.stick.unlink(missing_ok=True)
        machine.data.unlink(missing_ok=True)
        if keep:
            shutil.copytree(rundir, keep / rundir.name, dirs_exist_ok=True)


def ratio_interval(ours: list[float], theirs: list[float],
                   rounds: int = 10000) -> tuple[float, float]:
    """A bootstrap 95 % interval of median(ours) / median(theirs): each way's
    runs resampled with replacement (seeded: the same runs print the same)."""
    rng = random.Random(14)  # noqa: S311 -- a resampling, not a secret
    ratios = sorted(statistics.median(rng.choices(ours, k=len(ours))) /
                    statistics.median(rng.choices(theirs, k=len(theirs)))
                    for _ in range(rounds))
    return ratios[int(rounds * 0.025)], ratios[int(rounds * 0.975)]


def paired_interval(ours: list[float], theirs: list[float],
                    rounds: int = 10000) -> tuple[float, float, float]:
    """The median of the rounds' own ratios (ours[i] / theirs[i]: the two
    boots of a round ran one after the other, in alternating order) and a
    bootstrap 95 % interval of it, resampling whole rounds. A host that is
    slower for a while slows both boots of its rounds: that drift, which
    widens ratio_interval, cancels in each round's ratio."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    rng = random.Random(14)  # noqa: S311 -- a resampling, not a secret
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                     for _ in range(rounds))
    return statistics.median(ratios), medians[int(rounds * 0.025)], medians[int(rounds * 0.975)]


def verdict(low: float, high: float) -> str:
    return ("met" if high <= TARGET else "NOT MET" if low > TARGET
            else "not decided: the interval straddles it (more runs)")


def report(times: dict[str, list[Times]], failed: dict[str, set[str]] | None) -> None:
    runs = len(times[SHIPPED])
    print(f"{runs} boots each way, alternating; medians (min-max), seconds of the guest's clock")
    for name in FIGURES:
        shipped = [t.figure(name) for t in times[SHIPPED]]
        plain = [t.figure(name) for t in times[PLAIN]]
        ratio = statistics.median(shipped) / statistics.median(plain)
        low, high = ratio_interval(shipped, plain)
        print(f"  {name:21} shipped {statistics.median(shipped):6.2f} "
              f"({min(shipped):.2f}-{max(shipped):.2f})  plain {statistics.median(plain):6.2f} "
              f"({min(plain):.2f}-{max(plain):.2f})  shipped/plain {ratio:.3f} "
              f"[95 % {low:.3f}-{high:.3f}]")
        print(f"  {'':21} runs shipped {', '.join(f'{v:.2f}' for v in shipped)}; "
              f"plain {', '.join(f'{v:.2f}' for v in plain)}")
        paired, low, high = paired_interval(shipped, plain)
        print(f"  {'':21} each round's shipped/plain: "
              f"{', '.join(f'{a / b:.3f}' for a, b in zip(shipped, plain, strict=True))}; "
              f"median {paired:.3f} [95 % {low:.3f}-{high:.3f}]")
    shipped = [t.multi_user for t in times[SHIPPED]]
    plain = [t.multi_user for t in times[PLAIN]]
    ratio = statistics.median(shipped) / statistics.median(plain)
    low, high = ratio_interval(shipped, plain)
    print(f"kernel -> multi-user, shipped / plain: {ratio:.3f} (overhead {ratio - 1:+.1%}); "
          f"target <= {TARGET}, the ways' medians: {verdict(low, high)}")
    paired, low, high = paired_interval(shipped, plain)
    print(f"kernel -> multi-user, the rounds' own ratios: {paired:.3f} "
          f"(overhead {paired - 1:+.1%}); target <= {TARGET}, round by round: "
          f"{verdict(low, high)}")
    for way in (SHIPPED, PLAIN):
        print_steps(way, times[way])
    for way in (SHIPPED, PLAIN):
        units = "not in the log" if failed is None else ", ".join(sorted(failed[way])) or "none"
        print(f"units failed ({way}): {units}")


def print_steps(way: str, boots: list[Times]) -> None:
    """The median time of each milestone all the way's boots logged, then of
    the real root's PID 1, each with the time since the one before: where the
    kernel + initramfs time goes."""
    medians = sorted((statistics.median(b.steps[name] for b in boots), name)
                     for name in boots[0].steps if all(name in b.steps for b in boots))
    medians.append((statistics.median(b.initramfs for b in boots), "the real root's PID 1"))
    print(f"initramfs milestones ({way}), median s from the kernel's start "
          "(+ since the one before):")
    before = 0.0
    for seconds, name in medians:
        print(f"  {seconds:6.2f} (+{seconds - before:5.2f})  {name}")
        before = seconds


# A boot's line as main() prints it:
# "shipped 3: Times(initramfs=12.1, multi_user=40.2, steps={...})".
BOOT_LINE = re.compile(r"^(shipped|plain) (\d+): Times\(initramfs=([0-9.]+), "
                       r"multi_user=([0-9.]+), steps=(\{.*\})\)$")


def times_from_log(text: str) -> dict[str, list[Times]]:
    """The boots a run printed, round by round, its complete rounds only (both
    ways booted): the figures of a run stopped before its end (--from-log)."""
    boots: dict[tuple[str, int], Times] = {}
    for line in text.splitlines():
        if found := BOOT_LINE.match(line.strip()):
            way, n, initramfs, multi_user, steps = found.groups()
            boots[way, int(n)] = Times(float(initramfs), float(multi_user),
                                       ast.literal_eval(steps))
    rounds = sorted(n for way, n in boots if way == SHIPPED and (PLAIN, n) in boots)
    return {way: [boots[way, n] for n in rounds] for way in (SHIPPED, PLAIN)}


def report_log(logs: list[Path]) -> None:
    """The complete rounds of one run's log, or of several runs' pooled: each
    round's own ratio stands alone (its two boots ran back to back), so the
    rounds of runs made at different times can be put together."""
    times: dict[str, list[Times]] = {SHIPPED: [], PLAIN: []}
    for log in logs:
        for way, boots in times_from_log(log.read_text(errors="replace")).items():
            times[way] += boots
    if len(times[SHIPPED]) < 2:
        raise SystemExit(f"{', '.join(map(str, logs))}: fewer than two complete rounds")
    print(f"from {', '.join(map(str, logs))}: their complete rounds")
    report(times, None)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.image_boot")
    parser.add_argument("--runs", type=int, default=7, help="boots each way")
    parser.add_argument("--image", type=Path,
                        help="a built image (default: build a minimal one, about 2 min)")
    parser.add_argument("--keep", type=Path, help="keep each boot's console and report there "
                        "(its kernel log is the report's kernel_log command)")
    parser.add_argument("--from-log", type=Path, nargs="+", metavar="LOG",
                        help="no boot: the figures of the complete rounds runs printed "
                        "to LOG (a run stopped before its end; several runs pooled)")
    args = parser.parse_args()
    if args.from_log:
        report_log(args.from_log)
        return
    logging.basicConfig(level=logging.WARNING)
    before = load()
    work = Path(tempfile.mkdtemp(prefix="anklume-bench-image-boot-", dir="/var/tmp"))
    try:
        image = bench_stick(args.image or build_image(work), work)
        times: dict[str, list[Times]] = {SHIPPED: [], PLAIN: []}
        failed: dict[str, set[str]] = {SHIPPED: set(), PLAIN: set()}
        for n in range(args.runs):
            for way in (SHIPPED, PLAIN) if n % 2 == 0 else (PLAIN, SHIPPED):
                t, units = boot_once(image, work, way, n, args.keep)
                times[way].append(t)
                failed[way].update(line.split()[0] for line in units if line.strip())
                print(f"{way} {n}: {t}", flush=True)
        print(f"{before} -> {load()}")
        report(times, failed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
