"""Boot the built stick image as a PC would: OVMF, systemd-boot, the stick on USB.

One QEMU process per boot, under TCG: OVMF's warm reset is slow and erratic
there, so a reboot is a new process on the same disks. The machine is a
copy of the built image on a USB stick (qemu-xhci + usb-storage), an NVMe
data disk and its own copy of OVMF's variable store; no network, except
for the boots that ask for one (``network=True``): QEMU's user networking,
through which the guest reaches the host's loopback at 10.0.2.2 (an
update's HTTP server); nothing in the image configures it, the test's
commands do.

The image is not modified for the tests. A test-only unit comes in through
systemd credentials in SMBIOS type 11 strings (systemd-debug-generator turns
``systemd.extra-unit.*`` into a unit and ``systemd.unit-dropin.*`` into a
drop-in that pulls it in); its script (report.py, a credential too) writes
one JSON report to a virtio-serial port and the unit powers the machine off.
Verdicts come from that report, never from the console. A boot that may
pull the stick (``unplug_on_request=True``) also has a control port and
QMP: when the guest writes ``pull-stick`` to the port, the host unplugs the
stick (QMP ``device_del``), as a person pulls it. The console (the
kernel's and the initramfs's lines, through ``console=ttyS0`` added by
systemd-boot's SMBIOS ``io.systemd.boot.kernel-cmdline-extra``, or under
Secure Boot systemd-stub's ``io.systemd.stub.kernel-cmdline-extra``) is kept in
the run directory for a person reading a failure.

QEMU writes each boot to qcow2 overlays over the machine's raw disks,
committed into them when QEMU has exited: a boot the emulator wedged (see
WEDGED) is thrown away and run again on the disks and variables as they were
before it; every other boot counts, whatever it did.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools import qemu
from devtools.slowness import ENV as SLOWNESS_ENV
from devtools.slowness import factor, scaled

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Secure Boot: this build verifies images against db, and keeps its variable
# store behind SMM so the OS cannot rewrite db (QEMU needs smm=on for it).
OVMF_CODE_SECURE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
REPORT_PORT = "org.anklume.test.report"
CONTROL_PORT = "org.anklume.test.control"  # the guest's requests to the host
PULL_STICK = "pull-stick"  # the request: unplug the stick now
# The request "screendump NAME": the host saves the display as it is now
# (QMP screendump) in the boot's directory as NAME.ppm.
SCREENDUMP = "screendump"
STICK_DEVICE = "stick-device"  # QEMU's id of the stick's usb-storage device
REPORT_UNIT = "anklume-test-report.service"
REPORT_SCRIPT = Path(__file__).with_name("report.py")
# tty0 last would keep the initramfs's messages off the serial line: ttyS0 is
# /dev/console here, tty0 still gets the kernel's lines.
SERIAL_CONSOLE = "console=tty0 console=ttyS0,115200"
SHUTDOWN_GRACE = 120.0  # seconds from the report to QEMU's exit (a clean poweroff)
HOST_FROM_GUEST = "10.0.2.2"  # QEMU user networking: the host's loopback, seen from the guest
GUEST_ADDRESS = "10.0.2.15/24"  # the address QEMU's DHCP would give (no route out)
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's and systemd-stub's
EFI_VARIABLE_NV_BS_RT = 7  # non-volatile, boot and runtime access: what bootctl writes
# A report command: the UKI systemd-stub says it was started as (a path on
# the ESP, UTF-16). efivarfs files cannot seek: read through a pipe.
STUB_IMAGE = ["sh", "-c", f"cat /sys/firmware/efi/efivars/StubImageIdentifier-{LOADER_GUID}"
                          " | tail -c +5 | tr -d '\\000'"]
STICK_SERIAL = "anklume-stick"
DATA_SERIAL = "anklume-data"
# QEMU's TCG (10.0, from bookworm-backports) at times leaves a vCPU halted for
# good: its timer interrupts never come, the guest kernel says so every 21 s
# ("rcu_preempt kthread timer wakeup didn't happen ... Possible timer
# handling issue on cpu=1") and the work queued on that CPU (udev's, in the
# initramfs) waits forever: the boot never ends. Seen twice in some 300 boots
# of the image tier and the boot bench (2026-12-05, CPU 1 stalled from the
# guest's first second; the same boot ran clean on its next run). Nothing in
# the image can keep a CPU's timer from firing: the emulator's fault, not the
# system's. Such a boot is run again, on the disks and variables as they were.
WEDGED = "timer wakeup didn't happen"
RUNS_OF_A_WEDGED_BOOT = 3  # a boot wedged three times in a row fails
WEDGED_BOOTS: list[str] = []  # the run directories of the boots run again: said at the end
STICK_OVERLAY = "stick.qcow2"  # in the boot's directory
DATA_OVERLAY = "data.qcow2"


def report_unit(wait: float, settle: list[str], until: str, after: str = "basic.target") -> str:
    return f"""[Unit]
Description=anklume image test: report this boot to the host, then power off
After={after}
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
Environment=ANKLUME_TEST_WAIT={wait:.0f}
Environment={SLOWNESS_ENV}={factor():g}
Environment="ANKLUME_TEST_SETTLE={' '.join(settle)}"
Environment=ANKLUME_TEST_UNTIL={until}
ImportCredential=anklume-test.*
ExecStart=/usr/bin/python3 %d/anklume-test.report.py
"""


def smbios_credential(name: str, value: bytes) -> str:
    encoded = base64.b64encode(value).decode()
    return f"type=11,value=io.systemd.credential.binary:{name}={encoded}"


def smbios_string(value: str) -> str:
    return "type=11,value=" + value.replace(",", ",,")  # QEMU's option syntax


@dataclass
class Boot:
    """What one boot left: the guest's report (None if it never came) and the console."""

    report: dict[str, Any] | None
    console: str
    rundir: Path
    seconds: float
    timed_out: bool
    powered_off: bool
    # QEMU's exit status when it ended by itself (0: the guest powered off
    # or, under -no-reboot, reset; a signal's negative number: QEMU died).
    exit_status: int | None = None
    # The emulator wedged a vCPU (WEDGED in the console): ended at once.
    wedged: bool = False

    def explain(self) -> str:
        why = ("wedged by the emulator" if self.wedged else
               "timed out" if self.timed_out else
               "no report from the booted system" if self.report is None else "reported")
        ended = f", QEMU exited with {self.exit_status}" if self.powered_off else ""
        tail = "\n".join(self.console.splitlines()[-40:])
        return (f"{why} after {self.seconds:.0f} s{ended}; run directory {self.rundir}; "
                f"console:\n{tail}")


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def unplug_stick(bootdir: Path) -> None:
    """The stick pulled out of the running machine (QMP ``device_del``, then
    the device's removal confirmed by QEMU); ``bootdir/pulled`` says how it went."""
    from devtools.vm.guest import QMP  # the VM tier's client, QEMU's own protocol

    stop = threading.Event()
    timer = threading.Timer(scaled(30), stop.set)  # QMP's socket is there from the start
    timer.start()
    try:
        qmp = QMP(bootdir / "qmp.sock", stop)
        qmp.command("device_del", id=STICK_DEVICE)
        qmp.wait_event("DEVICE_DELETED", lambda data: data.get("device") == STICK_DEVICE)
        outcome = "pulled"
    except (OSError, RuntimeError) as e:
        outcome = f"not pulled: {e}"
    finally:
        timer.cancel()
    (bootdir / "pulled").write_text(outcome + "\n")


def screendumps_asked(control: str) -> list[str]:
    """The names of the screendumps the guest asked for, in order."""
    return [words[1] for line in control.splitlines()
            if len(words := line.split()) == 2 and words[0] == SCREENDUMP
            and words[1].isidentifier()]


def take_screendump(bootdir: Path, name: str) -> None:
    """The display as the guest's compositor left it (QMP ``screendump``: the
    graphics card's memory, PPM), saved as ``bootdir/NAME.ppm``; a failure is
    written to ``bootdir/NAME.error`` for the test to say."""
    from devtools.vm.guest import QMP  # the VM tier's client, QEMU's own protocol

    stop = threading.Event()
    timer = threading.Timer(scaled(30), stop.set)
    timer.start()
    try:
        qmp = QMP(bootdir / "qmp.sock", stop)
        try:
            qmp.command("screendump", filename=str(bootdir / f"{name}.ppm"))
        finally:
            qmp.close()  # QEMU takes one QMP client at a time
    except (OSError, RuntimeError) as e:
        (bootdir / f"{name}.error").write_text(f"{e}\n")
    finally:
        timer.cancel()


class Overlays:
    """Where one boot writes: qcow2 overlays over the machine's raw disks
    (in the boot's directory, named as ``Machine.argv`` names them) and the
    variable store as it was before, kept to put back."""

    def __init__(self, machine: Machine, bootdir: Path):
        self.machine = machine
        self.pairs = ((bootdir / STICK_OVERLAY, machine.stick),
                      (bootdir / DATA_OVERLAY, machine.data))
        self.vars_before = bootdir / "OVMF_VARS.before"
        for overlay, disk in self.pairs:
            subprocess.run([qemu.QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "raw",
                            "-b", str(disk.resolve()), str(overlay)], check=True)
        shutil.copyfile(machine.vars, self.vars_before)

    def keep(self) -> None:
        """The boot counts: what it wrote goes into the machine's disks."""
        for overlay, _ in self.pairs:
            subprocess.run([qemu.QEMU_IMG, "commit", "-q", "-d", str(overlay)], check=True)
            overlay.unlink()
        self.vars_before.unlink()

    def forget(self) -> None:
        """The boot never happened: its writes dropped, the variables put back."""
        for overlay, _ in self.pairs:
            overlay.unlink()
        self.vars_before.replace(self.machine.vars)


def pull_the_plug(proc: subprocess.Popen[bytes]) -> None:
    """QEMU ended as a power cut ends a PC: the guest is told nothing, and
    what QEMU has written is on the disks. SIGTERM, not SIGKILL: QEMU then
    writes out its overlays' metadata (with SIGKILL the clusters a boot
    allocated since the guest's last flush were lost -- the firmware's
    rename of a boot counter, which it never flushes, was); SIGKILL only if
    QEMU does not end."""
    proc.terminate()
    try:
        proc.wait(timeout=scaled(30))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def set_aside(bootdir: Path, run: int) -> None:
    """A wedged run's files moved to ``bootdir/wedged-RUN`` for a person to read."""
    aside = bootdir / f"wedged-{run}"
    aside.mkdir()
    for path in list(bootdir.iterdir()):
        if not path.name.startswith("wedged-"):
            path.rename(aside / path.name)


def read_report(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    if not text.endswith("\n"):
        return None  # not written whole
    report: dict[str, Any] = json.loads(text.splitlines()[-1])
    return report


class Machine:
    """A PC with the stick plugged in: its disks and firmware variables stay
    from one boot to the next, as on a real machine."""

    def __init__(self, image: Path, rundir: Path, data_mib: int = 2048, memory_mib: int = 2048,
                 cpus: int = 2, vars_template: Path = OVMF_VARS, secure_boot: bool = False,
                 cmdline_extra: str = ""):
        """``secure_boot``: the firmware that enforces it, with ``vars_template``
        holding the keys enrolled (tests/image/test_secure_boot.py).
        ``cmdline_extra``: words added to every boot's kernel command line
        beside the serial console's (bench/image_boot.py masks the first-boot
        wizard, which would wait for a person)."""
        rundir.mkdir(parents=True, exist_ok=True)
        self.rundir = rundir
        self.stick = rundir / "stick.img"
        subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(image), str(self.stick)],
                       check=True)
        self.data = rundir / "data.img"
        with self.data.open("wb") as f:
            f.truncate(data_mib * 1024 * 1024)
        self.vars = rundir / "OVMF_VARS.fd"
        shutil.copyfile(vars_template, self.vars)
        # No one reads the menu here: its 3 s countdown would add 3 s to every
        # boot (about a minute over the tier). `bootctl set-timeout 0` writes
        # the same variable; the menu and loader.conf stay as built.
        self._set_loader_variable("LoaderConfigTimeout", "0")
        self.secure_boot = secure_boot
        self.memory_mib = memory_mib
        # Two by default: each vCPU is a host thread (multi-threaded TCG), so a
        # boot's parallel work (udev, anklumed and anklumectl starting side by
        # side, Incus) uses the second core -- with QEMU 8.1 or later only
        # (devtools/qemu.py: an older one runs them on one thread).
        self.cpus = cpus
        self.cmdline_extra = cmdline_extra
        self.boots = 0

    def choose_entry_once(self, entry: str) -> None:
        """The next boot starts ``entry`` (a file name in loader/entries),
        as ``bootctl set-oneshot`` asks: systemd-boot's LoaderEntryOneShot in
        the machine's variable store, which systemd-boot reads and deletes.
        The boots after it take the menu's default again."""
        self._set_loader_variable("LoaderEntryOneShot", entry)

    def _set_loader_variable(self, name: str, value: str) -> None:
        """One of systemd-boot's string variables (UTF-16, NUL-terminated, as
        bootctl writes them) in the machine's variable store."""
        dump = self.rundir / f"{name}.json"
        dump.write_text(json.dumps({"version": 2, "variables": [{
            "name": name, "guid": LOADER_GUID, "attr": EFI_VARIABLE_NV_BS_RT,
            "data": (value + "\0").encode("utf-16-le").hex()}]}))
        tool = Path(sys.executable).with_name("virt-fw-vars")
        subprocess.run([tool, "--inplace", self.vars, "--set-json", dump], check=True,
                       capture_output=True)

    @property
    def cmdline_extra_key(self) -> str:
        """Whose SMBIOS words reach the kernel: systemd-boot adds its own to
        the entry's options, which systemd-stub drops under Secure Boot (the
        UKI's profile is the command line, docs/boot-chain.md); the stub's
        own it appends after the profile's, Secure Boot or not."""
        return ("io.systemd.stub.kernel-cmdline-extra" if self.secure_boot
                else "io.systemd.boot.kernel-cmdline-extra")

    def argv(self, bootdir: Path, credentials: Mapping[str, bytes],
             target: str = "multi-user.target", network: bool = False,
             control: bool = False) -> list[str]:
        machine, code = "q35", OVMF_CODE
        if self.secure_boot:
            machine, code = "q35,smm=on", OVMF_CODE_SECURE
        nic = "user,model=virtio-net-pci" if network else "none"
        argv = [*qemu.command(self.cpus), "-machine", machine,
                "-m", str(self.memory_mib), "-no-reboot", "-nic", nic,
                "-display", "none", "-monitor", "none",
                "-serial", f"file:{bootdir / 'console.log'}",
                *(["-global", "driver=cfi.pflash01,property=secure,value=on"]
                  if self.secure_boot else []),
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
                "-device", "qemu-xhci,id=xhci",
                "-drive", f"if=none,id=stick,format=qcow2,file={bootdir / STICK_OVERLAY}",
                "-device", f"usb-storage,bus=xhci.0,drive=stick,id={STICK_DEVICE},"
                           f"serial={STICK_SERIAL},"
                           "removable=on,bootindex=0",
                "-drive", f"if=none,id=data,format=qcow2,file={bootdir / DATA_OVERLAY}",
                "-device", f"nvme,drive=data,serial={DATA_SERIAL}",
                "-device", "virtio-serial-pci",
                "-chardev", f"file,id=report,path={bootdir / 'report.json'}",
                "-device", f"virtserialport,chardev=report,name={REPORT_PORT}",
                "-smbios", smbios_string(f"{self.cmdline_extra_key}="
                                         f"{SERIAL_CONSOLE} systemd.unit={target}"
                                         + (f" {self.cmdline_extra}" if self.cmdline_extra
                                            else ""))]
        if control:
            argv += ["-chardev", f"file,id=control,path={bootdir / 'control'}",
                     "-device", f"virtserialport,chardev=control,name={CONTROL_PORT}",
                     "-qmp", f"unix:{bootdir / 'qmp.sock'},server=on,wait=off"]
        for name, value in credentials.items():
            argv += ["-smbios", smbios_credential(name, value)]
        return argv

    def boot(self, credentials: Mapping[str, bytes] | None = None,
             commands: Mapping[str, list[str]] | None = None,
             settle: list[str] | None = None,
             wait: float = 300.0, timeout: float = 600.0,
             target: str = "multi-user.target", network: bool = False,
             unplug_on_request: bool = False,
             stop_when: Callable[[Path], bool] | None = None,
             until: str = "boot-complete", cut_after_report: bool = False,
             report_after: str = "basic.target", screendumps: bool = False) -> Boot:
        """One boot, up to the guest's report and its poweroff. ``target``:
        the boot's goal (an image with a desktop starts it at
        graphical.target; the tests that do not look at it boot no further
        than multi-user.target, as fast as a console image). ``credentials``
        are system credentials for the image's own units; ``commands`` (name:
        argv) are run by the report script and their output reported; the
        report waits for boot-complete.target and for ``settle``'s units to
        finish starting (at most ``wait`` seconds of the guest's time).
        ``network``: a network card on QEMU's user networking (HOST_FROM_GUEST).
        ``unplug_on_request``: the stick is pulled when the guest asks
        (PULL_STICK on CONTROL_PORT; ``bootdir/pulled`` says how it went).
        ``screendumps``: the display is saved when the guest asks
        ("screendump NAME" on CONTROL_PORT: ``bootdir/NAME.ppm``).
        ``stop_when(bootdir)``, checked each second, ends a boot that will
        never report (one the firmware refused) without waiting for ``timeout``.
        ``until="anklumed"``: the report comes as soon as anklumed answers
        (its start's work done: a rollback recorded, the menu rewritten),
        not after boot-complete.target; ``cut_after_report``: the power is
        cut once the report is in (what the guest wrote before survives a
        power cut by design), instead of waiting for its poweroff -- both
        for a boot whose later part no test looks at. ``report_after``: the
        unit the report waits for before it starts (multi-user.target waits
        for the units it pulls in, the report's too, unless the report is
        ordered after it: bench/image_boot.py reads when multi-user.target
        was reached)."""
        self.boots += 1
        bootdir = self.rundir / f"boot-{self.boots}"
        bootdir.mkdir()
        unit = report_unit(scaled(wait), settle or [], until, report_after)
        creds = {
            f"systemd.extra-unit.{REPORT_UNIT}": unit.encode(),
            "systemd.unit-dropin.multi-user.target~anklume-test":
                f"[Unit]\nWants={REPORT_UNIT}\n".encode(),
            "anklume-test.report.py": REPORT_SCRIPT.read_bytes(),
            "anklume-test.commands": json.dumps(dict(commands or {})).encode(),
            **(credentials or {}),
        }
        argv = self.argv(bootdir, creds, target, network,
                         control=unplug_on_request or screendumps)
        for run in range(1, RUNS_OF_A_WEDGED_BOOT + 1):
            (bootdir / "qemu.argv").write_text("\n".join(argv) + "\n")
            overlays = Overlays(self, bootdir)
            boot = self._run(argv, bootdir, timeout, unplug_on_request, screendumps,
                             stop_when, cut_after_report)
            if not boot.wedged or run == RUNS_OF_A_WEDGED_BOOT:
                overlays.keep()
                return boot
            overlays.forget()
            set_aside(bootdir, run)
            WEDGED_BOOTS.append(str(bootdir))
        raise AssertionError("unreachable: the last run returns")

    def _run(self, argv: list[str], bootdir: Path, timeout: float, unplug_on_request: bool,
             screendumps: bool, stop_when: Callable[[Path], bool] | None,
             cut_after_report: bool) -> Boot:
        """One QEMU process, watched each second until the guest's report and
        poweroff, a timeout, ``stop_when``, or the emulator wedging it."""
        started = time.monotonic()
        report_file = bootdir / "report.json"
        console = bootdir / "console.log"
        with (bootdir / "qemu.log").open("wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        timed_out = wedged = False
        reported_at: float | None = None
        pulled = not unplug_on_request
        dumped: list[str] = []
        try:
            while proc.poll() is None:
                now = time.monotonic()
                control = read_text(bootdir / "control")
                if not pulled and PULL_STICK in control:
                    pulled = True  # in a thread: QEMU's answer must not stall this loop
                    threading.Thread(target=unplug_stick, args=(bootdir,), daemon=True).start()
                for name in screendumps_asked(control)[len(dumped):] if screendumps else []:
                    dumped.append(name)  # at once: the guest goes on after a few seconds
                    take_screendump(bootdir, name)
                if reported_at is None and read_report(report_file) is not None:
                    reported_at = now
                    if cut_after_report:
                        break
                if reported_at is None and WEDGED in read_text(console):
                    wedged = True
                    break
                if now - started > scaled(timeout) or \
                        (reported_at is not None and now - reported_at > SHUTDOWN_GRACE):
                    timed_out = reported_at is None
                    break
                if stop_when is not None and stop_when(bootdir):
                    break
                time.sleep(1)
        finally:
            exit_status = proc.poll()
            powered_off = exit_status is not None
            pull_the_plug(proc)
        return Boot(report=read_report(report_file), console=read_text(console),
                    rundir=bootdir, seconds=time.monotonic() - started, timed_out=timed_out,
                    powered_off=powered_off, exit_status=exit_status, wedged=wedged)
