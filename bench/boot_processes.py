"""Benchmark: how many processes the initramfs's state script starts on the
usual boot, this tree's against main's (prints figures; not a test). Light:
no QEMU, no lock.

  .venv/bin/python -m bench.boot_processes [--base main] [--shell "busybox sh"]

Under TCG each process the initramfs starts costs ~60-130 ms (bench/image_boot.py's
profile), so the count is the boot's cost. Each call runs under strace -f on a
fresh copy of a PERSIST written by anklumed's own writers, as the image's
first state is (anklume_image/persist.py: slot A installed and ok, slot B
empty, ab-state A), plus slot A marked good: the usual boot. Processes are
the forks (clone, fork, vfork: subshells, pipelines, tools), execs the
execve calls after the shell's own. "boot" is anklume-boot.sh's own path
around them, run as tests/unit/test_boot_redirect.py runs it (its functions,
a driver instead of main: no device, no mount): the command line, the count
(record_attempt), read_slot_info and the hand-off (write_handoff).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from anklumed.persist import PersistDir
from anklumed.slots import model
from anklumed.slots.model import SlotMeta, SlotStatus
from anklumed.stick import SlotName

INITRAMFS = Path(__file__).resolve().parents[1] / "initramfs"
WHEN = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def usual_persist(root: Path, boot_count: int, b_ok: bool) -> Path:
    """ab-state A, slot A ok (marked good), slot B empty or ok, no rollback."""
    (root / "slots").mkdir(parents=True)
    pdir = PersistDir(root)
    ok = SlotMeta(status=SlotStatus.OK, version="1.0.0", size=1_234_567_890,
                  sha256="ab" * 32, root_hash="cd" * 32, salt="ef" * 32,
                  data_block_size=4096, hash_block_size=4096, hash_alg="sha256",
                  installed_at=WHEN, activated_at=WHEN, last_good_at=WHEN,
                  source="anklume-image 1.0.0")
    model.write_meta(pdir, SlotName.A, ok)
    model.write_meta(pdir, SlotName.B, ok if b_ok else SlotMeta())
    model.write_primary(pdir, SlotName.A, boot_count)
    return root


def processes(shell: list[str], script: Path, args: list[str], work: Path,
              env: dict[str, str] | None = None) -> tuple[int, int]:
    """(forks, execs) of one run of the script."""
    trace = work / "trace"
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("strace is needed: apt-get install strace")
    run = subprocess.run([strace, "-f", "-qq", "-z", "-o", str(trace),
                          "-e", "trace=execve,clone,clone3,fork,vfork",
                          *shell, str(script), *args],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={"PATH": os.environ["PATH"], **(env or {})})
    if run.returncode != 0:
        raise SystemExit(f"{script} {args}: exit {run.returncode}: {run.stderr}")
    lines = trace.read_text().splitlines()
    forks = sum(1 for line in lines
                if any(f" {call}(" in line for call in ("clone", "clone3", "fork", "vfork"))
                and not line.rstrip().endswith("= -1"))
    execs = sum(1 for line in lines if " execve(" in line) - 1
    return forks, execs


# anklume-boot.sh's functions from the command line to the hand-off, without
# the device work (say and step without /dev/kmsg: the host's log is not for this).
DRIVER = """
say() { echo "anklume: $*"; }
step() { :; }
PERSIST_MNT=$BENCH_PERSIST
PERSIST_DEV=bench
BOOT_DISK=bench
read_cmdline
record_attempt
redirect_if_needed
read_slot_info "$BOOT"
ROOT_HASH=$META_ROOT_HASH VERITY=unsigned
write_handoff
"""


def boot_harness(scripts: Path) -> Path:
    script = (scripts / "anklume-boot.sh").read_text()
    harness = scripts / "boot-harness.sh"
    harness.write_text(script.removesuffix('main "$@"\n') + DRIVER)
    return harness


CALLS: list[tuple[str, list[str], int, bool]] = [
    # (label, arguments after PERSIST, boot-count, slot B ok)
    ("record, boot-count 0, B empty", ["record"], 0, False),
    ("record, boot-count 1, B ok", ["record"], 1, True),
    ("slot-info A", ["slot-info", "A"], 0, False),
    ("slot-info B (empty)", ["slot-info", "B"], 0, False),
    ("boot: record, slot-info, hand-off", ["boot"], 0, False),
]


def old_scripts(base: str, into: Path) -> Path:
    into.mkdir()
    for name in ("anklume-state.sh", "anklume-boot.sh", "anklume-redirect.sh"):
        text = subprocess.run(["git", "show", f"{base}:initramfs/{name}"], cwd=INITRAMFS,
                              capture_output=True, text=True, check=True).stdout
        (into / name).write_text(text)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="the git revision to compare with")
    parser.add_argument("--shell", default="busybox sh")
    options = parser.parse_args()
    shell = shlex.split(options.shell)
    with tempfile.TemporaryDirectory(prefix="anklume-procs-") as tmp:
        work = Path(tmp)
        old = old_scripts(options.base, work / "old")
        new = work / "new"
        shutil.copytree(INITRAMFS, new)
        (work / "cmdline").write_text("boot=anklume anklume.toram=0 quiet\n")
        print(f"{options.shell}: forks (execs) per call, {options.base} -> this tree")
        for label, args, count, b_ok in CALLS:
            figures = []
            for scripts in (old, new):
                persist = work / "persist"
                shutil.rmtree(persist, ignore_errors=True)
                usual_persist(persist, count, b_ok)
                if args[0] == "boot":
                    env = {"ANKLUME_LIB": str(scripts), "ANKLUME_CMDLINE": str(work / "cmdline"),
                           "ANKLUME_EFIVARS": str(work / "no-efivars"),
                           "ANKLUME_RUN": str(work / "run"), "BENCH_PERSIST": str(persist)}
                    figures.append(processes(shell, boot_harness(scripts), [], work, env))
                    continue
                extra = [str(work / "cmdline")] if args[0] == "record" else args[1:]
                figures.append(processes(shell, scripts / "anklume-state.sh",
                                         [args[0], str(persist), *extra], work))
            (f0, e0), (f1, e1) = figures
            print(f"  {label:32} {f0:3} ({e0}) -> {f1:3} ({e1})   x{f1 / f0:.2f}")


if __name__ == "__main__":
    main()
