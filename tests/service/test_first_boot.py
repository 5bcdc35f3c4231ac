"""anklumectl first-boot and data setup at a terminal (a pty, as a person
would run them): the disk picked from the table and confirmed by typing its
name, the passphrase asked twice and never echoed, a warning under 12
characters. BTRFS without encryption, as this kernel allows (no dm-crypt);
the passphrase prompts are checked up to the Setup call, which polkit then
refuses, so nothing needs LUKS here."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys

import pexpect

from devtools.simulate import REPO
from devtools.slowness import scaled
from tests.service.conftest import Sim

NOT_AUTHORIZED = 3  # anklumectl's documented exit code
STYLE = re.compile(r"(?:\x1b\[[0-9;]*m)*")  # colours and bold, between any two characters


def at_terminal(sim: Sim, *argv: str, user: str | None = None) -> pexpect.spawn:
    """anklumectl, as root or as ``user`` (devtools.as_user, as Sim.ctl does), on
    a colour terminal wide enough for the disk table to keep one line per disk."""
    prefix = ["-m", "devtools.as_user", user] if user else ["-m", "anklumectl"]
    child = pexpect.spawn(sys.executable, [*prefix, *argv], cwd=str(REPO),
                          env={**sim.env, "TERM": "xterm-256color"}, encoding="utf-8",
                          timeout=scaled(60), dimensions=(60, 220))
    child.logfile_read = io.StringIO()  # everything the terminal showed
    return child


def shown(text: str) -> re.Pattern[str]:
    """``text`` as the terminal shows it: rich may colour any word of it."""
    return re.compile(STYLE.pattern.join(re.escape(char) for char in text))


def plain(text: str) -> str:
    return STYLE.sub("", text)


def finish(child: pexpect.spawn) -> tuple[int, str]:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return child.exitstatus, child.before


def data_state(sim: Sim) -> dict:  # type: ignore[type-arg]
    done = sim.ctl("data", "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def blank(device: object) -> bool:
    """Nothing blkid recognises: no filesystem, LUKS header or partition table."""
    return subprocess.run(["blkid", "-p", str(device)], capture_output=True,
                          check=False).returncode == 2


def test_the_daemon_says_when_it_has_probed_the_disks(sim: Sim) -> None:
    st = data_state(sim)  # `data status` waits for the probe (30 s at most)
    assert st["DisksProbed"] is True
    usable = [row[1] for row in st["Candidates"] if not row[7]]
    assert sim.stick is not None
    assert str(sim.data_disk) in usable and str(sim.stick.loop) not in usable


def test_first_boot_sets_up_the_disk_picked_from_the_table_and_confirmed(sim: Sim) -> None:
    disk = str(sim.data_disk)
    assert sim.stick is not None
    child = at_terminal(sim, "first-boot", "--encryption", "none", "--pool-name", "vault")
    child.expect(shown("Disk to erase and use for the data"))
    table = plain(child.before)
    # The table lists the data disk as usable and the boot stick as refused.
    row = next(line for line in table.splitlines() if disk + " " in line)
    assert "yes" in row
    stick_row = next(line for line in table.splitlines() if str(sim.stick.loop) + " " in line)
    assert "no:" in stick_row
    child.sendline(disk)
    child.expect(shown(f"Everything on {disk} will be erased"))
    child.expect(shown(f"Type {disk} to confirm"))
    child.sendline(disk)
    child.expect(shown("anyone who takes the disk reads your data"))  # the seed's warning
    status, _out = finish(child)
    assert status == 0
    st = data_state(sim)
    # No --fs: the first filesystem this system can make (ZFS where it works).
    assert (st["State"], st["Pool"], st["Backend"], st["Encryption"]) == (
        "mounted", "vault", st["Filesystems"][0], "none")
    assert "ENCRYPTION=none" in sim.persist_files()["pool.conf"]


def test_a_wrong_confirmation_erases_nothing(sim: Sim) -> None:
    disk = str(sim.data_disk)
    child = at_terminal(sim, "data", "setup", "--disk", disk, "--encryption", "none")
    child.expect(shown(f"Type {disk} to confirm"))
    child.sendline("yes")  # not the disk's name
    status, out = finish(child)
    assert status == 1 and "Not confirmed; nothing was changed." in plain(out)
    assert data_state(sim)["State"] == "absent"
    assert blank(disk)
    assert "pool.conf" not in sim.persist_files()


def test_the_passphrase_is_asked_twice_never_echoed_and_a_short_one_warned(
        sim: Sim) -> None:
    disk = str(sim.data_disk)
    sim.set_polkit("deny")  # the prompts run before the (refused) Setup call
    child = at_terminal(sim, "data", "setup", "--disk", disk, "--pool-name", "vault",
                        user="nobody")
    child.expect(shown(f"Type {disk} to confirm"))
    child.sendline(disk)
    child.expect(shown("New passphrase for the data disk: "))
    child.sendline("short-pw")
    child.expect(shown("under 12 characters"))
    child.expect(shown("The same passphrase again: "))
    child.sendline("short-pw-typo")
    child.expect(shown("The two passphrases differ"))
    child.expect(shown("New passphrase for the data disk: "))
    child.sendline("a long enough passphrase")
    child.expect(shown("The same passphrase again: "))
    assert "under 12 characters" not in plain(child.before)  # a strong one: no warning
    child.sendline("a long enough passphrase")
    status, out = finish(child)
    assert status == NOT_AUTHORIZED, out
    screen = plain(child.logfile_read.getvalue())
    assert screen.count("under 12 characters") == 1
    for secret in ("short-pw", "a long enough passphrase"):
        assert secret not in screen  # typed, never echoed
    assert data_state(sim)["State"] == "absent"
    assert blank(disk)


def test_ctrl_c_leaves_a_data_job_running_and_says_how_to_cancel_it(sim: Sim) -> None:
    """Ctrl-C asks "Cancel the update?" only of an update: following a data
    job, it says the job goes on and how to follow or cancel it."""
    child = at_terminal(sim, "data", "setup", "--disk", str(sim.data_disk), "--fs", "btrfs",
                        "--encryption", "none", "--pool-name", "vault", "--yes")
    child.expect(shown("checking"))  # the first phase: the job runs and was read once
    # Stopped, the daemon holds the job where it is, so Ctrl-C lands while it runs.
    assert sim.daemon is not None
    os.kill(sim.daemon.pid, signal.SIGSTOP)
    try:
        child.sendintr()
        child.expect(shown("the data-setup job goes on in anklumed"))
        status, _out = finish(child)
    finally:
        os.kill(sim.daemon.pid, signal.SIGCONT)
    screen = plain(child.logfile_read.getvalue())
    assert status == 130, screen
    assert "Cancel the update?" not in screen
    number = re.search(r"anklumectl wait (\d+)", screen)
    assert number and f"anklumectl cancel {number[1]}" in screen, screen
    done = sim.ctl("wait", number[1])
    assert done.returncode == 0, done.stderr
    assert data_state(sim)["State"] == "mounted"
