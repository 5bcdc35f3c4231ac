"""Boot a stick image through our initramfs: Debian's kernel, direct boot.

The stick is a USB disk (qemu-xhci + usb-storage) as on a real machine; a
small virtio disk receives the tiny system's report (boot-guest-init.sh),
read here after QEMU exits, so the verdict never comes from the console.
The console is kept for the initramfs's messages. The guest's control port
(anklume.ctl) lets it ask for the stick to be pulled, as in the other VM
tests (devtools/vm/guestctl.py's protocol, served by guest.Control).
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from devtools import qemu
from devtools.slowness import scaled
from devtools.vm.guest import RUN_PARENT, Console, Control, _blockdev, _device
from devtools.vm.kernel import Kernel

RESULTS_SERIAL = "anklume-results"
STICK_SERIAL = "anklume-stick"
BEGIN, END = b"ANKLUME-RESULT-BEGIN\n", b"ANKLUME-RESULT-END\n"


@dataclass
class BootResult:
    report: dict[str, str] | None    # None: the tiny system never reported
    console: str
    rundir: Path
    seconds: float
    timed_out: bool

    def explain(self) -> str:
        why = ("timed out" if self.timed_out else
               "no report from the booted system" if self.report is None else "reported")
        return f"{why} after {self.seconds:.0f} s; run directory {self.rundir}; console:\n" \
               + "\n".join(self.console.splitlines()[-40:])


def parse_report(raw: bytes) -> dict[str, str] | None:
    start = raw.find(BEGIN)
    end = raw.find(END, start + 1)
    if start < 0 or end < 0:
        return None
    report: dict[str, str] = {}
    for line in raw[start + len(BEGIN):end].decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            report[key] = value
    return report


@dataclass(frozen=True)
class Pull:
    """Pull the USB disk ``serial`` when the console shows ``text``; plug
    ``image`` back in ``replug_after`` seconds later (None: never)."""

    text: str
    serial: str
    replug_after: float | None = None
    image: Path | None = None


class PullingConsole(Console):
    """The console, and a hand that pulls a USB disk when a text appears on it."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, control: Control,
                 cut_power: tuple[str, float] | None, pull: Pull | None):
        self._control = control
        self._pull = pull
        super().__init__(proc, log, None, cut_power)

    def _watch(self, proc: subprocess.Popen[bytes], line: str) -> None:
        super()._watch(proc, line)
        if self._pull is not None and self._pull.text in line:
            pull, self._pull = self._pull, None
            threading.Thread(target=self._pull_and_replug, args=(pull,), daemon=True).start()

    def _pull_and_replug(self, pull: Pull) -> None:
        self._control.unplug(pull.serial)
        if pull.replug_after is not None and pull.image is not None:
            time.sleep(pull.replug_after)
            self._control.plug(pull.serial, "usb", pull.image)


def boot(kernel: Kernel, initrd: Path, sticks: list[tuple[str, Path]], cmdline: str = "",
         memory_mb: int = 512, timeout: float = 180.0,
         cut_power: tuple[str, float] | None = None,
         pull: Pull | None = None) -> BootResult:
    """One boot of ``sticks`` (USB serial, image); returns what the system reported.
    ``cut_power`` (text, seconds) kills QEMU that long after the console shows
    the text; ``pull`` pulls a disk when it shows its text (and may plug it back)."""
    rundir = Path(tempfile.mkdtemp(prefix="anklume-boot-", dir=RUN_PARENT))
    rundir.chmod(0o755)
    results = rundir / "results.img"
    with results.open("wb") as f:
        f.truncate(1 << 20)
    append = f"console=ttyS0 boot=anklume panic=-1 loglevel=4 {cmdline}".strip()
    argv = [*qemu.command(1), "-machine", "pc",
            "-m", str(memory_mb), "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", append,
            "-qmp", f"unix:{rundir}/qmp.sock,server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=ctl,path={rundir}/ctl.sock,server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=anklume.ctl",
            "-device", "qemu-xhci,id=xhci",
            "-blockdev", _blockdev(RESULTS_SERIAL, results),
            "-device", _device(RESULTS_SERIAL, "virtio")]
    for serial, image in sticks:
        argv += ["-blockdev", _blockdev(serial, image), "-device", _device(serial, "usb")]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    control = Control(rundir)
    console = PullingConsole(proc, rundir / "console.log", control, cut_power, pull)
    timed_out = False
    try:
        control.start()
        try:
            proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        proc.kill()
        proc.wait()
        control.stop()
        console.join()
    return BootResult(report=parse_report(results.read_bytes()),
                      console=(rundir / "console.log").read_text(errors="replace"),
                      rundir=rundir, seconds=time.monotonic() - started, timed_out=timed_out)
