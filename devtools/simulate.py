"""Run anklume Live on its embedded default: no hardware needed.

A simulated boot stick (GPT image on a loop device, real ext4 PERSIST, slot A
with a squashfs and its dm-verity tree), a private system-type bus, the FAKE
polkit authority of devtools/fake_polkit.py, a boot hand-off as the initramfs
would write it, and the real anklumed. Then ``anklumectl status``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import io
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from anklume_client import ClientError, Connection, DataDisk
from devtools import stickimg
from devtools.privatebus import PrivateBus
from devtools.slowness import scaled

REPO = Path(__file__).resolve().parent.parent
DATA_DISK_MIB = 512
BUS_NAME = "org.anklume.Live1"


class NameWatch:
    """Asks the bus whether a name has an owner, over one connection kept
    open. A start looks every few milliseconds: a ``dbus-send`` per look (a
    process each, 0.14 s under TCG) took a core from the daemon it waited
    for (measured in the VM tier's plain guest: 520 of them, 72 s). Its own
    thread runs the connection's loop, so a caller inside a running event
    loop (an async test restarting the daemon) can ask too."""

    def __init__(self, address: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._bus: MessageBus = self._wait(self._connect(address))

    @staticmethod
    async def _connect(address: str) -> MessageBus:
        return await MessageBus(bus_address=address).connect()  # in the loop's thread

    def _wait(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(scaled(30))

    def owned(self, name: str) -> bool:
        reply = self._wait(self._bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="NameHasOwner", signature="s",
            body=[name])))
        return bool(reply is not None and reply.message_type is MessageType.METHOD_RETURN
                    and reply.body[0])

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._bus.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(scaled(10))
        self._loop.close()


CLONE_NEWTIME = 0x80


def boot_clock_at(libc: ctypes.CDLL, seconds: float) -> None:
    """In the child, before exec: a time namespace whose boot clock
    (CLOCK_BOOTTIME, /proc/uptime) reads ``seconds`` now. execve moves the
    caller into the namespace unshare made for its children. ``libc`` is
    loaded by the parent: between fork and exec, with other threads in the
    parent, the child does no more than system calls (dlopen could wait
    for ever on a lock another thread held at the fork)."""
    if libc.unshare(CLONE_NEWTIME) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWTIME)")
    offset = int(seconds - time.clock_gettime(time.CLOCK_BOOTTIME))
    fd = os.open("/proc/self/timens_offsets", os.O_WRONLY)
    try:
        os.write(fd, f"boottime {offset} 0\n".encode())
    finally:
        os.close(fd)


def exit_status(stop: SystemExit, stderr: io.StringIO) -> int:
    """The status a process would exit with on ``stop`` (sys.exit's rules)."""
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(stop.code, file=stderr)
    return 1


class Simulation:
    def __init__(self, workdir: Path, boot_env: str | None = None, slot_mib: int = 32) -> None:
        self.workdir = workdir
        self.slot_mib = slot_mib
        self.bus = PrivateBus(workdir / "bus")
        self.stick: stickimg.Stick | None = None
        self.data_disk: Path | None = None  # a loop device: the simulated data disk
        self.polkit: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.boot_env = boot_env
        self.mode_file = workdir / "polkit-mode"
        self.polkit_log = workdir / "polkit-calls.jsonl"
        self.daemon_log = workdir / "anklumed.log"
        self.persist_mnt = workdir / "persist"
        self._names: NameWatch | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address}

    def set_polkit(self, mode: str) -> None:
        self.mode_file.write_text(mode + "\n")

    def start(self) -> Simulation:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        self.bus.start()
        self.set_polkit("allow")
        self.polkit = subprocess.Popen(
            [sys.executable, "-m", "devtools.fake_polkit", "--bus", self.bus.address,
             "--mode-file", self.mode_file, "--log-file", self.polkit_log],
            cwd=REPO, stdout=subprocess.PIPE,
        )
        # The fake polkit starts (a Python process: 2 to 3 s under TCG) while
        # the stick is built and the daemon starts, which ask it nothing;
        # the simulation is ready once it has said so too.
        self.stick = stickimg.build(self.workdir / "stick", slot_mib=self.slot_mib)
        self.data_disk = stickimg.blank_disk(self.workdir / "data-disk.img", DATA_DISK_MIB)
        self.write_handoff(self.boot_env)
        self.start_daemon()
        assert self.polkit.stdout is not None
        if self.polkit.stdout.readline().strip() != b"ready":
            raise RuntimeError("the fake polkit did not start")
        return self

    def write_handoff(self, text: str | None = None) -> None:
        assert self.stick is not None
        self.handoff = self.workdir / "boot.env"
        self.handoff.write_text(text if text is not None else (
            f"SLOT=A\nBOOT_COUNT=1\nROLLBACK=0\nTORAM=0\nVERITY=unsigned\nBOOT_DISK={self.stick.loop}\n"
            f"PERSIST_PARTUUID={stickimg.partuuid(self.stick.persist)}\n"))
        (self.workdir / "cmdline").write_text("quiet anklume.toram=0\n")
        (self.workdir / "anklumed.toml").write_text(
            f'persist_mountpoint = "{self.persist_mnt}"\n'
            f'handoff = "{self.handoff}"\n'
            f'cmdline = "{self.workdir / "cmdline"}"\n'
            'deadline_action = "log"\nfollow_systemd = false\n'
            f'keys_dir = "{self.workdir / "keys"}"\n'
            # no firmware and no running UKI of its own: never the host's
            f'efivars = "{self.workdir / "efivars"}"\n'
            f'running_uki = "{self.workdir / "running-uki.efi"}"\n'
            f'data_mountpoint = "{self.workdir / "data"}"\n'
            f'incus_state_dir = "{self.workdir / "incus-state"}"\n'
            f'incus_socket = "{self.workdir / "incus.socket"}"\n'
            "allow_loop_disks = true\n"
            # its own loop devices only: not those of a test beside it (pytest -n 2)
            f'loop_disks_under = "{self.workdir.resolve()}"\n'
            "luks_unlock_ms = 200\n"  # a simulation: keep each unlock short
            # ... and small: argon2id's MiB cost most under TCG, and the config's
            # least (32) took 1.0 s an open in the VM tier's plain guest, 64 MiB 1.8 s
            "luks_memory_mib = 32\n"
            # ... and no benchmark: under TCG it took 7 of the 11 s of a format
            # (and of each key added) to settle on 4 passes.
            "luks_iterations = 4\n"
        )

    def start_daemon(self, extra_env: dict[str, str] | None = None,
                     uptime: float | None = None) -> float:
        """Start anklumed; return seconds until it owned its bus name.
        ``uptime``: the daemon's boot clock reads that many seconds at its
        start (a time namespace), whatever this machine's uptime is."""
        started = time.monotonic()
        with self.daemon_log.open("ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "anklumed", "--config", self.workdir / "anklumed.toml",
                 "--log-level", "debug"],
                cwd=REPO, env={**self.env, **(extra_env or {})}, stdout=log, stderr=log,
                preexec_fn=None if uptime is None else functools.partial(
                    boot_clock_at, ctypes.CDLL(None, use_errno=True), uptime),
            )
        while not self.name_owned():
            if self.daemon.poll() is not None:
                raise RuntimeError(f"anklumed exited: {self.daemon_log.read_text()[-2000:]}")
            if time.monotonic() - started > scaled(60):
                raise RuntimeError(f"anklumed did not take its bus name in {scaled(60):.0f} s")
            time.sleep(0.005)
        return time.monotonic() - started

    def name_owned(self) -> bool:
        if self._names is None:
            self._names = NameWatch(self.bus.address)
        return self._names.owned(BUS_NAME)

    def stop_daemon(self) -> bool:
        """Stop anklumed; False if SIGTERM did not stop it in 10 s (then killed)."""
        if self.daemon and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(scaled(10))
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
                return False
        return True

    def ctl(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run anklumectl, as root or (through devtools.as_user) as ``user``."""
        prefix = ["-m", "devtools.as_user", user] if user else ["-m", "anklumectl"]
        return subprocess.run([sys.executable, *prefix, *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, timeout=scaled(60))

    def ctl_here(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ctl`` as root without a new process: anklumectl's own ``main`` in
        this one (the same parsing, passphrase files, messages and exit
        codes), its stdin empty and its output captured as there. Under TCG
        an anklumectl start cost 3 to 5 s in the VM tier's plain guest (its
        imports alone 2.5 s), more than the daemon's work for most calls.
        Its own thread, as ``lock_data_disk``: the caller may be running an
        event loop; a daemon thread, so that a call that hangs fails its
        test (as ``ctl``'s timeout does) without holding the run's exit."""
        from anklumectl.main import main  # only the tests that use it pay its imports
        argv = ["--bus", self.bus.address, *args]
        out, err = io.StringIO(), io.StringIO()
        codes: list[int] = []

        def call() -> None:
            stdin, sys.stdin = sys.stdin, io.StringIO()  # as stdin=DEVNULL: not a terminal
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    codes.append(main(argv))
            except SystemExit as e:  # argparse's refusals: exit status 2 and a usage line
                codes.append(exit_status(e, err))
            finally:
                sys.stdin = stdin

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(scaled(60))
        if not codes:
            raise TimeoutError(f"anklumectl {shlex.join(args)} did not end in {scaled(60):.0f} s")
        return subprocess.CompletedProcess(["anklumectl", *argv], codes[0], out.getvalue(),
                                           err.getvalue())

    def lock_data_disk(self) -> None:
        """Unmount, export and close the data disk: what ``anklumectl data
        lock --stop-incus`` asks the daemon, asked from this process: an
        anklumectl start costs as long as the lock under TCG (its imports
        alone took 10 s in the VM tier's plain guest), at the end of each
        test that leaves the disk open. A lock that fails is not an error here,
        as the exit status of that command was not: what stays open then
        keeps its loop device busy."""
        async def lock() -> None:
            conn = await Connection.connect(self.bus.address)
            try:
                job = await DataDisk(conn).lock(True)
                await asyncio.wait_for(job.follow(), scaled(60))
            finally:
                await conn.close()

        # A thread of its own: the caller may be running an event loop.
        with ThreadPoolExecutor(1) as pool, contextlib.suppress(ClientError, TimeoutError):
            pool.submit(asyncio.run, lock()).result()

    def stop(self) -> None:
        if self.data_disk and self.daemon and self.daemon.poll() is None and (
                os.path.ismount(self.workdir / "data")
                or list(Path("/dev/mapper").glob("anklume-data-*"))):
            self.lock_data_disk()
        self.stop_daemon()
        if self._names is not None:
            self._names.close()
            self._names = None
        if self.polkit and self.polkit.poll() is None:
            self.polkit.terminate()
            self.polkit.wait(scaled(10))
        self.bus.stop()
        if self.stick:
            subprocess.run(["umount", self.persist_mnt], capture_output=True, check=False)
            self.stick.detach()
        if self.data_disk:
            for mnt in (self.workdir / "incus-state", self.workdir / "data"):
                subprocess.run(["umount", mnt], capture_output=True, check=False)
            stickimg.detach_if_holding(self.data_disk, self.workdir / "data-disk.img")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/anklume-sim"))
    parser.add_argument("--keep", action="store_true",
                        help="keep running so you can try anklumectl; Ctrl-C stops")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the simulation needs root (loop devices, mount)", file=sys.stderr)
        return 1
    sim = Simulation(args.workdir)
    try:
        sim.start()
        print(f"anklumed owns org.anklume.Live1 on {sim.bus.address}")
        status = subprocess.run([sys.executable, "-m", "anklumectl", "status"], cwd=REPO,
                                env=sim.env, check=False)
        if args.keep:
            print(f"\nTry: DBUS_SYSTEM_BUS_ADDRESS={sim.bus.address} "
                  f"{REPO}/.venv/bin/anklumectl slots\nCtrl-C stops the simulation.")
            try:
                while sim.daemon and sim.daemon.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return status.returncode
    finally:
        sim.stop()


if __name__ == "__main__":
    sys.exit(main())
