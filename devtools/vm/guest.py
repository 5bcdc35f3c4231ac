"""Boot the test guest, serve its disk hot-plug requests, return its result.

The guest's result is explicit: stage.sh writes the command's exit status to
``status`` in the run directory (shared read-write over 9p). No status means
the guest died, hung or panicked, and the console's tail says why. QEMU is
always killed, whatever happens here.
"""

from __future__ import annotations

import compileall
import contextlib
import functools
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from devtools import qemu, slowness
from devtools.slowness import scaled
from devtools.vm.kernel import HERE, Kernel, ensure_kernel

CHECKOUT = HERE.parent.parent
RUN_PARENT = Path(os.environ.get("ANKLUME_VM_RUNDIR", "/var/tmp"))


@dataclass
class Disk:
    """A disk the guest sees from boot; ``bus`` is usb (a stick) or virtio."""

    id: str
    image: Path
    bus: str = "virtio"


@dataclass
class Result:
    status: int | None          # None: the guest ended without recording one
    rundir: Path
    console_tail: str
    timed_out: bool = False
    seconds: float = 0.0
    power_cut: bool = False     # QEMU was killed on purpose (Guest.cut_power)

    @property
    def ok(self) -> bool:
        return self.status == 0

    def explain(self) -> str:
        if self.timed_out:
            why = "the guest timed out"
        elif self.status is None:
            why = "the guest ended without a result (panic, crash or power-off)"
        else:
            why = f"the guest's command exited with status {self.status}"
        return f"{why}; run directory {self.rundir}; console tail:\n{self.console_tail}"

    def discard(self) -> None:
        """Remove the run directory: for a caller that has checked the run and
        found it good. A failed run keeps it (console log, journal, results)."""
        shutil.rmtree(self.rundir, ignore_errors=True)


@dataclass
class Guest:
    command: Sequence[str]
    mode: str = "plain"                      # plain | systemd
    disks: list[Disk] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    memory_mb: int = 3072
    cpus: int = 2
    timeout: float = 600.0
    console: IO[str] | None = None           # where to stream the guest's output
    kernel: Kernel | None = None
    cmdline: str = ""                        # added to the kernel command line
    files: dict[str, str] = field(default_factory=dict)  # extra files in the run dir
    # A power cut: when the console shows this text, QEMU is killed that many
    # seconds later (what the guest had not written to its disks is lost).
    cut_power: tuple[str, float] | None = None

    def run(self) -> Result:
        kernel = self.kernel or ensure_kernel()
        compile_checkout()
        rundir = Path(tempfile.mkdtemp(prefix="anklume-vm-", dir=RUN_PARENT))
        self._write_rundir(rundir, kernel)
        started = time.monotonic()
        proc = subprocess.Popen(self._qemu_argv(kernel, rundir), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        console = Console(proc, rundir / "console.log", self.console, self.cut_power)
        control = Control(rundir)
        timed_out = False
        try:
            control.start()
            timed_out = not _wait(proc, rundir / "status", self.timeout)
        finally:
            proc.kill()
            proc.wait()
            control.stop()
            console.join()
        status_file = rundir / "status"
        status = int(status_file.read_text()) if status_file.exists() else None
        return Result(status=status, rundir=rundir, console_tail=console.tail(),
                      timed_out=timed_out, seconds=time.monotonic() - started,
                      power_cut=console.cut.is_set())

    def _write_rundir(self, rundir: Path, kernel: Kernel) -> None:
        rundir.chmod(0o755)
        (rundir / "disks").mkdir()
        for name in ("prepare.sh", "stage.sh", "plain-init.sh"):
            shutil.copy2(HERE / name, rundir / name)
        (rundir / "config.sh").write_text(
            f"KERNEL_VERSION={shlex.quote(kernel.version)}\n"
            f"KERNEL_ROOT={shlex.quote(str(kernel.root))}\n"
            f"CHECKOUT={shlex.quote(str(CHECKOUT))}\n"
            # prepare.sh scales systemd's start timeouts by it.
            f"SLOWNESS={slowness.factor():g}\n")
        for name, text in self.files.items():
            (rundir / name).parent.mkdir(parents=True, exist_ok=True)
            (rundir / name).write_text(text)
        env = {"ANKLUME_VM_GUEST": "1", "ANKLUME_VM_MODE": self.mode,
               "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/root", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               # The host's: a guest's load average says nothing of the host's.
               slowness.ENV: str(slowness.factor())}
        if self.mode == "plain":
            env["DM_DISABLE_UDEV"] = "1"  # no udevd: libdevmapper makes its own nodes
        env.update(self.env)
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        (rundir / "run.sh").write_text(exports + "exec " + shlex.join(self.command) + "\n")

    def _qemu_argv(self, kernel: Kernel, rundir: Path) -> list[str]:
        append = (f"console=ttyS0 panic=-1 quiet loglevel=4 anklume.mode={self.mode} "
                  f"systemd.show_status=error {self.cmdline}").strip()
        argv = [*qemu.command(self.cpus), "-machine", "pc",
                "-m", str(self.memory_mb), "-nographic", "-no-reboot",
                "-nic", "none", "-kernel", str(kernel.vmlinuz), "-initrd",
                str(kernel.initramfs), "-append", append,
                "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,"
                           "multidevs=remap",
                "-virtfs", f"local,path={rundir},mount_tag=anklume.run,security_model=none,"
                           "multidevs=remap",
                "-qmp", f"unix:{rundir}/qmp.sock,server=on,wait=off",
                "-device", "virtio-serial-pci",
                "-chardev", f"socket,id=ctl,path={rundir}/ctl.sock,server=on,wait=off",
                "-device", "virtserialport,chardev=ctl,name=anklume.ctl",
                "-device", "qemu-xhci,id=xhci"]
        for disk in self.disks:
            argv += ["-blockdev", _blockdev(disk.id, disk.image), "-device",
                     _device(disk.id, disk.bus)]
        return argv


@functools.cache
def compile_checkout() -> None:
    """Byte-compile the checkout here, once: a guest sees it read-only and
    would compile every module again in each Python process, under TCG
    (0.65 s for the update stack alone)."""
    for package in ("anklumed", "anklumectl", "devtools", "tests"):
        compileall.compile_dir(CHECKOUT / package, quiet=1)


def _wait(proc: subprocess.Popen[bytes], status: Path, timeout: float,
          grace: float = 30.0) -> bool:
    """Wait for QEMU to exit; once the result is recorded, only for ``grace``."""
    deadline = time.monotonic() + scaled(timeout)
    while proc.poll() is None:
        now = time.monotonic()
        if status.exists():
            deadline = min(deadline, now + grace)
        if now > deadline:
            return status.exists()
        time.sleep(0.2)
    return True


def _blockdev(node: str, image: Path) -> str:
    return json.dumps({"driver": "raw", "node-name": node, "cache": {"no-flush": True},
                       "file": {"driver": "file", "filename": str(image)}})


def _device(node: str, bus: str) -> str:
    """The disk's device in JSON, for -device and for QMP's device_add alike:
    typed, as device_add wants it (QEMU 10 refuses "on" for a boolean there,
    where 7.2 took the command line's words)."""
    props: dict[str, str | bool] = {"id": node, "drive": node, "serial": node}
    if bus == "usb":
        props = {"driver": "usb-storage", "bus": "xhci.0", **props, "removable": True}
    elif bus == "virtio":
        props = {"driver": "virtio-blk-pci", **props}
    else:
        raise ValueError(f"unknown bus {bus!r} (usb or virtio)")
    return json.dumps(props)


class Console:
    """Copies the guest's serial console to a log (and a stream), keeps a tail."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, stream: IO[str] | None,
                 cut_power: tuple[str, float] | None = None):
        self._lines: list[str] = []
        self._cut_power = cut_power
        self.cut = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(proc, log, stream), daemon=True)
        self._thread.start()

    def _watch(self, proc: subprocess.Popen[bytes], line: str) -> None:
        if self._cut_power is None or self._cut_power[0] not in line:
            return
        delay = self._cut_power[1]
        self._cut_power = None

        def cut() -> None:
            if proc.poll() is None:
                self.cut.set()
                proc.kill()

        timer = threading.Timer(delay, cut)
        timer.daemon = True
        timer.start()

    def _pump(self, proc: subprocess.Popen[bytes], log: Path, stream: IO[str] | None) -> None:
        assert proc.stdout is not None
        with log.open("w") as out:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").replace("\r", "")
                out.write(line)
                self._lines = [*self._lines[-59:], line]
                self._watch(proc, line)
                if stream is not None:
                    stream.write(line)
                    stream.flush()

    def join(self) -> None:
        self._thread.join(timeout=5)

    def tail(self) -> str:
        return "".join(self._lines)


class Control:
    """The host half of the guest's control channel (a virtio-serial port).

    The guest asks for disks to be plugged or pulled (guestctl.py); this side
    carries it out through QMP, as a hand on a USB port would.
    """

    def __init__(self, rundir: Path):
        self.rundir = rundir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._qmp: QMP | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        ctl = _connect(self.rundir / "ctl.sock", self._stop)
        if ctl is None:
            return
        self._qmp = QMP(self.rundir / "qmp.sock", self._stop)
        ctl.settimeout(0.5)
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = ctl.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                reply = self._handle(line.decode(errors="replace").split())
                with contextlib.suppress(OSError):
                    ctl.sendall(reply.encode() + b"\n")

    def _handle(self, words: list[str]) -> str:
        try:
            if words[:1] == ["plug"] and len(words) == 4:
                self._plug(words[1], words[2], words[3])
            elif words[:1] == ["unplug"] and len(words) == 2:
                self._unplug(words[1])
            else:
                return f"error unknown request {' '.join(words)!r}"
        except (RuntimeError, ValueError, OSError) as e:
            return f"error {e}"
        return "ok"

    def _plug(self, node: str, bus: str, spec: str) -> None:
        """spec: size=<bytes> for a new sparse disk, or file=<path in the run dir>."""
        key, _, value = spec.partition("=")
        if key == "size":
            image = self.rundir / "disks" / f"{node}.img"
            with image.open("wb") as f:
                f.truncate(int(value))
        elif key == "file":
            image = (self.rundir / value).resolve()
            if not image.is_relative_to(self.rundir):
                raise ValueError("the image must be inside the run directory")
        else:
            raise ValueError(f"bad disk spec {spec!r}")
        self._attach(node, bus, image)

    def _attach(self, node: str, bus: str, image: Path) -> None:
        assert self._qmp is not None
        self._qmp.command("blockdev-add", **json.loads(_blockdev(node, image)))
        self._qmp.command("device_add", **json.loads(_device(node, bus)))

    def plug(self, node: str, bus: str, image: Path) -> None:
        """Plug a disk in now (for the host's own scenarios, not the guest's)."""
        self._wait_for_qmp()
        self._attach(node, bus, image)

    def unplug(self, node: str) -> None:
        """Pull a disk now (for the host's own scenarios, not the guest's)."""
        self._wait_for_qmp()
        self._unplug(node)

    def _wait_for_qmp(self) -> None:
        for _ in range(100):
            if self._qmp is not None:
                break
            time.sleep(0.05)

    def _unplug(self, node: str) -> None:
        assert self._qmp is not None
        self._qmp.command("device_del", id=node)
        self._qmp.wait_event("DEVICE_DELETED", lambda data: data.get("device") == node)
        self._qmp.command("blockdev-del", **{"node-name": node})


def _connect(path: Path, stop: threading.Event) -> socket.socket | None:
    while not stop.is_set():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            time.sleep(0.1)
    return None


class QMP:
    """A minimal synchronous QMP client: one command at a time, events kept.

    Every read has a deadline: a QEMU that stops answering (or an event that
    never comes) fails the test that waited, instead of hanging the tier."""

    def __init__(self, path: Path, stop: threading.Event):
        sock = _connect(path, stop)
        if sock is None:
            raise RuntimeError("QEMU went away before QMP answered")
        self._sock = sock
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        if self._read(scaled(60)) is None:
            raise RuntimeError("QEMU sent no QMP greeting")
        self.command("qmp_capabilities")

    def _read(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None if none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise RuntimeError("QMP connection closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def command(self, name: str, **arguments: Any) -> Any:
        self._sock.settimeout(scaled(60))
        self._sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        while True:
            message = self._read(scaled(60))
            if message is None:
                raise RuntimeError(f"QEMU did not answer QMP {name}")
            if "event" in message:
                self._events.append(message)
            elif "error" in message:
                raise RuntimeError(f"QMP {name}: {message['error'].get('desc')}")
            elif "return" in message:
                return message["return"]

    def close(self) -> None:
        self._sock.close()

    def wait_event(self, name: str, match: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while True:
            for event in self._events:
                if event["event"] == name and match(event.get("data", {})):
                    self._events.remove(event)
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            message = self._read(remaining)
            if message is not None:
                self._events.append(message)
        raise RuntimeError(f"QEMU sent no {name} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.vm [--systemd] [--disk id:bus:image] -- command...``"""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m devtools.vm",
                                     description="Run a command in the test guest.")
    parser.add_argument("--systemd", action="store_true", help="boot systemd as PID 1")
    parser.add_argument("--disk", action="append", default=[], metavar="ID:BUS:IMAGE")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    disks = []
    for spec in args.disk:
        node, bus, image = spec.split(":", 2)
        disks.append(Disk(node, Path(image).resolve(), bus))
    guest = Guest(args.command, mode="systemd" if args.systemd else "plain", disks=disks,
                  timeout=args.timeout, console=sys.stdout)
    result = guest.run()
    print(f"\nanklume-vm: {result.explain().splitlines()[0]} ({result.seconds:.1f} s)",
          file=sys.stderr)
    return result.status if result.status is not None else 125
