"""The image tier's harness (devtools/image_vm) without a guest: the
machine's command line, the report script's budget for a test's commands,
the one-shot boot entry in the machine's variable store, a wedged boot run
again (a FAKE QEMU), and how the harness ends QEMU (the real one, with no
machine, writing through an overlay)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from devtools import image_vm, slowness
from devtools.image_vm import (
    CONTROL_PORT,
    LOADER_GUID,
    STICK_DEVICE,
    Machine,
    report,
    report_unit,
    screendumps_asked,
    take_screendump,
)
from devtools.vm.guest import QMP


def machine(tmp_path: Path) -> Machine:
    image = tmp_path / "stick-image"
    image.write_bytes(b"\0" * 4096)
    return Machine(image, tmp_path / "machine", data_mib=1)


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


def test_a_boot_has_no_network_and_no_control_unless_asked(tmp_path: Path) -> None:
    m = machine(tmp_path)
    argv = m.argv(tmp_path, {})
    assert option_values(argv, "-nic") == ["none"]
    assert "-qmp" not in argv and CONTROL_PORT not in " ".join(argv)
    assert option_values(argv, "-smp") == ["2"]


def test_the_boot_that_updates_gets_user_networking_and_the_one_that_pulls_qmp(
        tmp_path: Path) -> None:
    m = machine(tmp_path)
    argv = m.argv(tmp_path, {}, network=True, control=True)
    assert option_values(argv, "-nic") == ["user,model=virtio-net-pci"]
    assert option_values(argv, "-qmp") == [f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off"]
    assert any(f"id={STICK_DEVICE}," in value for value in option_values(argv, "-device"))
    assert any(f"name={CONTROL_PORT}" in value for value in option_values(argv, "-device"))


def test_words_for_every_boot_reach_the_kernel_beside_the_serial_console(
        tmp_path: Path) -> None:
    image = tmp_path / "stick-image"
    image.write_bytes(b"\0" * 4096)
    m = Machine(image, tmp_path / "machine", data_mib=1,
                cmdline_extra="systemd.mask=anklume-first-boot.service")
    extra = [v for v in option_values(m.argv(tmp_path, {}), "-smbios") if "cmdline-extra" in v]
    assert len(extra) == 1 and extra[0].endswith(
        "systemd.unit=multi-user.target systemd.mask=anklume-first-boot.service"), extra


def test_the_report_waits_for_the_unit_it_is_told_to(tmp_path: Path) -> None:
    """multi-user.target waits for what it pulls in: a report ordered after
    it sees when it was reached (bench/image_boot.py)."""
    assert "\nAfter=basic.target\n" in report_unit(300, [], "boot-complete")
    assert "\nAfter=multi-user.target\n" in report_unit(300, [], "anklumed",
                                                          after="multi-user.target")


def test_the_report_unit_passes_the_hosts_slowness(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(slowness.ENV, "2.5")
    slowness.factor.cache_clear()
    try:
        assert f"Environment={slowness.ENV}=2.5\n" in report_unit(300, [], "boot-complete")
    finally:
        slowness.factor.cache_clear()


@pytest.mark.parametrize(("factor", "rc"), [("1", None), ("40", 0)])
def test_a_tests_command_has_the_budget_scaled_by_the_hosts_slowness(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factor: str, rc: int | None) -> None:
    (tmp_path / "anklume-test.commands").write_text(json.dumps({"nap": ["sleep", "1"]}))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("ANKLUME_TEST_SLOWNESS", factor)
    monkeypatch.setattr(report, "COMMAND_TIMEOUT", 0.1)
    assert report.extra_commands()["nap"]["rc"] == rc


def test_a_one_shot_entry_is_written_to_the_machines_variable_store(tmp_path: Path) -> None:
    """As `bootctl set-oneshot` writes it: systemd-boot's variable, the entry's
    file name in UTF-16 with its terminating NUL."""
    m = machine(tmp_path)
    m.choose_entry_once("anklume-3-stick-a.conf")
    printed = subprocess.run([Path(sys.executable).with_name("virt-fw-vars"), "--input",
                              m.vars, "--output-json", "-"],
                             check=True, capture_output=True, text=True).stdout
    variables = {v["name"]: v for v in json.loads(printed)["variables"]}
    one_shot = variables["LoaderEntryOneShot"]
    assert (one_shot["guid"], one_shot["attr"]) == (LOADER_GUID, 7), one_shot
    assert bytes.fromhex(one_shot["data"]) == "anklume-3-stick-a.conf\0".encode("utf-16-le")


class SlowQmpSocket:
    """FAKE QMP socket: its one event comes after the wait's deadline (QEMU
    under TCG, the guest slow to let the device go)."""

    def __init__(self, clock: list[float], event: dict[str, object]) -> None:
        self.clock, self.chunks = clock, [json.dumps(event).encode() + b"\n"]

    def settimeout(self, timeout: float) -> None:
        pass

    def recv(self, size: int) -> bytes:
        self.clock[0] += 60.0  # the read blocked well past the deadline
        return self.chunks.pop(0) if self.chunks else b""


def bare_qmp(sock: object) -> Any:
    from devtools.vm import guest

    qmp = guest.QMP.__new__(guest.QMP)
    qmp._sock, qmp._buffer, qmp._events = sock, b"", []  # type: ignore[assignment]
    return qmp


def test_an_event_read_as_the_deadline_passes_is_not_lost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The stick's DEVICE_DELETED came while wait_event was blocked reading:
    # it was kept but never looked at, and the pull reported as not done.
    from devtools.vm import guest

    clock = [0.0]
    monkeypatch.setattr(guest, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # FAKE clock
    event: dict[str, object] = {"event": "DEVICE_DELETED", "data": {"device": STICK_DEVICE}}
    qmp = bare_qmp(SlowQmpSocket(clock, event))
    qmp.wait_event("DEVICE_DELETED", lambda data: data.get("device") == STICK_DEVICE)
    assert qmp._events == []  # found, and taken


def test_a_wait_for_an_event_that_never_comes_ends_at_its_deadline() -> None:
    """A QEMU that goes quiet fails the wait instead of hanging the tier (the
    read used to block with no deadline: a DEVICE_DELETED that never came
    would have held CI until its own limit)."""
    ours, qemu = socket.socketpair()
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            bare_qmp(ours).wait_event("DEVICE_DELETED", lambda data: True, timeout=0.5)
        except RuntimeError as e:
            outcome.append(e)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(slowness.scaled(20))
    hung = waiter.is_alive()
    qemu.close()  # ends a read that ignored its deadline (the socket closes under it)
    waiter.join(5)
    assert not hung, "the wait outlived its deadline"
    assert outcome and "sent no DEVICE_DELETED" in str(outcome[0]), outcome


def test_the_guests_screendump_requests_are_read_in_order_and_only_whole() -> None:
    control = "pull-stick\nscreendump session\nscreendump polkit\nscreendump ../x\nscreendump"
    assert screendumps_asked(control) == ["session", "polkit"]  # a name, never a path


def test_a_screendump_asks_qemu_for_the_display_in_the_boots_directory(
        tmp_path: Path) -> None:
    """QMP's screendump with the file QEMU writes, then the connection closed
    (QEMU serves one QMP client at a time: the next request needs it free)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "qmp.sock"))
    server.listen(1)
    asked: list[dict[str, Any]] = []

    def qemu() -> None:  # FAKE QEMU: a greeting, then an empty return to each command
        conn, _ = server.accept()
        conn.sendall(b'{"QMP": {}}\n')
        with conn.makefile("rb") as lines:
            for line in lines:
                asked.append(json.loads(line))
                conn.sendall(b'{"return": {}}\n')

    thread = threading.Thread(target=qemu, daemon=True)
    thread.start()
    take_screendump(tmp_path, "session")
    thread.join(slowness.scaled(10))
    assert not thread.is_alive(), "the connection was left open"
    assert [a["execute"] for a in asked] == ["qmp_capabilities", "screendump"]
    assert asked[1]["arguments"] == {"filename": str(tmp_path / "session.ppm")}
    assert not (tmp_path / "session.error").exists()
    server.close()


# A FAKE QEMU for the harness's wedged-boot handling: it writes what a boot
# would (the stick through its overlay with the real qemu-io, the variable
# store in place, the console), then either wedges -- the kernel's line on
# the console, and never ends -- or reports and powers off. RUNS says, run by
# run, which: "wedge" or "report".
FAKE_QEMU = r'''
import json, subprocess, sys, time
from pathlib import Path
argv = sys.argv[1:]
def option(prefix):
    return next(a[len(prefix):] for a in argv if a.startswith(prefix))
stick = option("if=none,id=stick,format=qcow2,file=")
variables = Path(option("if=pflash,format=raw,unit=1,file="))
console = Path(option("file:"))
report = Path(next(a for a in argv if a.startswith("file,id=report,")).split("path=")[1])
runs = Path(sys.argv[0]).with_name("runs")
done = Path(sys.argv[0]).with_name("done")
run = len(done.read_text().splitlines()) if done.exists() else 0
done.write_text("x\n" * (run + 1))
what = runs.read_text().split()[run]
offset = 512 * run  # each run writes its own sector: a dropped run's is still zero
subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x{0x70 + run:x} {offset} 512",
                stick], check=True, capture_output=True)
with variables.open("r+b") as f:
    f.write(b"run %d" % run)
if what == "wedge":
    console.write_text("[   22.1] rcu: rcu_preempt kthread timer wakeup didn't happen for "
                       "5251 jiffies! g-1163 f0x0 RCU_GP_WAIT_FQS(5) ->state=0x402\n")
    time.sleep(600)
console.write_text("booted\n")
report.write_text(json.dumps({"run": run}) + "\n")
'''


def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs: list[str]) -> None:
    from devtools import qemu

    script = tmp_path / "fake-qemu" / "qemu.py"
    script.parent.mkdir()
    script.write_text(FAKE_QEMU)
    (script.parent / "runs").write_text("\n".join(runs))
    monkeypatch.setattr(qemu, "command", lambda cpus: [sys.executable, str(script)])


def test_a_boot_the_emulator_wedged_runs_again_on_the_disks_as_they_were(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run wedges (after writing to the stick and the variables):
    its writes are dropped, its files set aside, and the second run's writes
    land in the machine's disks."""
    fake_qemu(tmp_path, monkeypatch, ["wedge", "report"])
    monkeypatch.setattr(image_vm, "WEDGED_BOOTS", [])
    m = machine(tmp_path)
    variables_before = m.vars.read_bytes()
    boot = m.boot(timeout=60)
    assert boot.report == {"run": 1} and not boot.wedged, boot.explain()
    stick = m.stick.read_bytes()
    assert stick[:512] == b"\0" * 512, "the wedged run's write reached the stick"
    assert stick[512:1024] == b"\x71" * 512, "the counted run's write is not on the stick"
    assert m.vars.read_bytes()[:5] == b"run 1" and \
        m.vars.read_bytes()[5:] == variables_before[5:]
    bootdir = m.rundir / "boot-1"
    assert "timer wakeup didn't happen" in (bootdir / "wedged-1" / "console.log").read_text()
    assert [str(bootdir)] == image_vm.WEDGED_BOOTS
    assert not list(bootdir.glob("*.qcow2"))  # committed, then removed


def test_a_boot_wedged_at_every_run_fails_saying_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_qemu(tmp_path, monkeypatch, ["wedge"] * image_vm.RUNS_OF_A_WEDGED_BOOT)
    monkeypatch.setattr(image_vm, "WEDGED_BOOTS", [])
    boot = machine(tmp_path).boot(timeout=60)
    assert boot.wedged and boot.report is None and not boot.timed_out
    assert boot.explain().startswith("wedged by the emulator"), boot.explain()
    assert len(image_vm.WEDGED_BOOTS) == image_vm.RUNS_OF_A_WEDGED_BOOT - 1


def test_a_boot_ended_by_the_harness_keeps_what_qemu_wrote(tmp_path: Path) -> None:
    """The real QEMU (no machine, one drive on an overlay) writes a cluster
    it allocates, as the firmware renames a boot counter, with no flush;
    the harness ends it (a power cut, a refused boot) and the overlay is
    committed: the write is in the disk. SIGKILL lost it."""
    from devtools import qemu

    disk, overlay, sock = tmp_path / "disk.img", tmp_path / "disk.qcow2", tmp_path / "qmp.sock"
    with disk.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run([qemu.QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(disk),
                    str(overlay)], check=True)
    proc = subprocess.Popen([qemu.QEMU, "-machine", "none", "-nodefaults", "-display", "none",
                             "-drive", f"if=none,id=d,file={overlay},format=qcow2",
                             "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    timer = threading.Timer(slowness.scaled(30), stop.set)  # QEMU listens a moment after it starts
    timer.start()
    try:
        qmp = QMP(sock, stop)
        # qemu-io's own report goes to QEMU's stdout; the disk says below.
        qmp.command("human-monitor-command",
                    **{"command-line": 'qemu-io d "write -P 0x55 1M 64k"'})
        qmp.close()
        image_vm.pull_the_plug(proc)
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    subprocess.run([qemu.QEMU_IMG, "commit", "-q", "-d", str(overlay)], check=True)
    with disk.open("rb") as f:
        f.seek(1024 * 1024)
        assert f.read(65536) == b"\x55" * 65536, "the write QEMU made was lost"
