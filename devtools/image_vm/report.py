"""Runs inside the booted image (Debian 13's python3), injected by the host.

It waits until the boot is over (boot-complete.target reached, or given up
because a unit it requires failed, and the units the host names settled; or
no job left but its own; or the time the host allows) -- or, when the host
asks for no more (ANKLUME_TEST_UNTIL=anklumed), only until anklumed answers,
its start's work done -- gathers what the tests judge -- units, anklumectl's
answers, /run/anklume/boot.env, failed units, the journal's errors -- and
writes it as one JSON line to a virtio-serial port the host reads after QEMU
exits. Its unit then powers the machine off. Standard library only: the
image is not modified for the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

PORT = Path("/dev/virtio-ports/org.anklume.test.report")
UNIT = "anklume-test-report.service"
UNITS = ("anklumed.service", "anklume-boot-check.service", "anklume-first-boot.service",
         "anklume-data-mount.service", "boot-complete.target", "multi-user.target",
         "incus.service", "incus-startup.service", "anklume-incus-pool.service",
         "ldconfig.service", "systemd-journal-catalog-update.service")
SHOWN = ("ActiveState", "SubState", "Result", "ActiveEnterTimestampMonotonic",
         "ConditionResult")
COMMAND_TIMEOUT = 300.0  # seconds a test's command may take on a quiet 2-core host


def slowness() -> float:
    """The host's factor for its waits (devtools/slowness.py), passed by the
    report unit: the guest's load average says nothing about the host."""
    try:
        return max(1.0, float(os.environ.get("ANKLUME_TEST_SLOWNESS", "1")))
    except ValueError:
        return 1.0


def run(argv: list[str], timeout: float = 60.0, **popen: Any) -> dict[str, Any]:
    """A command's exit status and output (``popen``: subprocess.run's other
    arguments, such as the user a test's script runs it as)."""
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, **popen)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"rc": None, "stdout": "", "stderr": str(e)}
    return {"rc": proc.returncode, "stdout": proc.stdout.decode(errors="replace"),
            "stderr": proc.stderr.decode(errors="replace")}


def as_json(result: dict[str, Any]) -> Any:
    try:
        return json.loads(result["stdout"])
    except ValueError:
        return None


def other_jobs() -> list[str]:
    lines = run(["systemctl", "list-jobs", "--no-legend", "--plain"])["stdout"].splitlines()
    return [line for line in lines if line.strip() and UNIT not in line]


def settled(units: list[str]) -> bool:
    """No start job left for these units (a job waiting for a person stays)."""
    return not any(line.split()[1] in units for line in other_jobs() if len(line.split()) > 1)


def wait_for_the_good_mark(deadline: float) -> None:
    """anklumed marks the boot good once it sees boot-complete.target: soon after."""
    while time.monotonic() < deadline:
        status = as_json(run(["anklumectl", "status", "--json"]))
        if status is None or status.get("MarkedGood"):
            return
        time.sleep(1)


def boot_complete_given_up() -> bool:
    """boot-complete.target has no job left and is not active: a unit it
    requires failed and this boot will never reach it. Its job is in the
    boot's first transaction, so no job never means "not yet"; the state is
    read after the jobs, so a job that just succeeded is seen active."""
    queued = any(len(line.split()) > 1 and line.split()[1] == "boot-complete.target"
                 for line in other_jobs())
    return not queued and \
        run(["systemctl", "is-active", "--quiet", "boot-complete.target"])["rc"] != 0


def wait_for_the_boot(budget: float, units: list[str]) -> str:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        complete = run(["systemctl", "is-active", "--quiet", "boot-complete.target"])["rc"] == 0
        if complete and settled(units):
            wait_for_the_good_mark(deadline)
            return "boot-complete"
        if not complete and settled(units) and boot_complete_given_up():
            return "boot-complete-failed"
        if not other_jobs():
            return "no-jobs"
        time.sleep(1)
    return "timeout"


def wait_for_anklumed(budget: float) -> str:
    """anklumed answers only once its start is over (the stick found, a
    rollback the boot loader made recorded, the menu rewritten)."""
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if as_json(run(["anklumectl", "status", "--json"])) is not None:
            return "anklumed"
        if not other_jobs():
            return "no-jobs"
        time.sleep(1)
    return "timeout"


def unit_states() -> dict[str, dict[str, str]]:
    states = {}
    for unit in UNITS:
        out = run(["systemctl", "show", unit, "--property=" + ",".join(SHOWN)])["stdout"]
        states[unit] = dict(line.partition("=")[::2] for line in out.splitlines() if line)
    return states


def key_values(path: Path) -> dict[str, str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


def extra_commands() -> dict[str, Any]:
    """Commands a test adds (a credential: JSON, name -> argv)."""
    source = Path(os.environ.get("CREDENTIALS_DIRECTORY", "/nonexistent")) / \
        "anklume-test.commands"
    if not source.exists():
        return {}
    commands: dict[str, list[str]] = json.loads(source.read_text())
    timeout = COMMAND_TIMEOUT * slowness()
    return {name: run(argv, timeout=timeout) for name, argv in commands.items()}


LOADER_VARS = Path("/sys/firmware/efi/efivars")
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's variables


def loader_variable(name: str) -> str | None:
    """A string systemd-boot left for the OS (efivarfs: 4 bytes of attributes,
    then UTF-16LE)."""
    try:
        raw = (LOADER_VARS / f"{name}-{LOADER_GUID}").read_bytes()
    except OSError:
        return None
    return raw[4:].decode("utf-16-le", errors="replace").rstrip("\0")


def report(waited: str) -> dict[str, Any]:
    status = run(["anklumectl", "status", "--json"])
    data = run(["anklumectl", "data", "status", "--json"])
    return {
        "waited": waited,
        "uptime": time.monotonic(),
        "units": unit_states(),
        "jobs": other_jobs(),
        "status": as_json(status), "status_raw": status,
        "data": as_json(data), "data_raw": data,
        "boot_env": key_values(Path("/run/anklume/boot.env")),
        "failed": run(["systemctl", "--failed", "--plain", "--no-legend"])["stdout"]
        .splitlines(),
        "errors": run(["journalctl", "-b", "-p", "err", "--no-pager", "-o",
                       "short-monotonic"])["stdout"].splitlines(),
        "anklume_journal": run(["journalctl", "-b", "--no-pager", "-o", "short-monotonic",
                                "-u", "anklume*", "-u", "incus*"])["stdout"].splitlines(),
        "bus_names": run(["busctl", "list", "--acquired", "--no-legend"])["stdout"],
        "analyze": run(["systemd-analyze", "time"])["stdout"],
        # Where a slow boot's time went, for a person (not judged).
        "blame": run(["systemd-analyze", "blame", "--no-pager"])["stdout"].splitlines()[:25],
        "cmdline": Path("/proc/cmdline").read_text().strip(),
        "entry_selected": loader_variable("LoaderEntrySelected"),
        "boot_count_path": loader_variable("LoaderBootCountPath"),
        "mounts": Path("/proc/self/mountinfo").read_text().splitlines(),
        "commands": extra_commands(),
    }


def main() -> int:
    budget = float(os.environ.get("ANKLUME_TEST_WAIT", "300"))
    units = os.environ.get("ANKLUME_TEST_SETTLE", "").split()
    if os.environ.get("ANKLUME_TEST_UNTIL") == "anklumed":
        waited = wait_for_anklumed(budget)
    else:
        waited = wait_for_the_boot(budget, units)
    line = json.dumps(report(waited)) + "\n"
    for _ in range(60):  # the port appears once udev has loaded virtio_console
        if PORT.exists():
            break
        time.sleep(0.5)
    with PORT.open("w") as port:
        port.write(line)
        port.flush()
        os.fsync(port.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
