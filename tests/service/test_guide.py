"""The welcome guide's data-disk screens driving the real anklumed of the
simulation (textual Pilot, in this process; the guide as root, so polkit is
not asked: the polkit refusal is the desktop tier's)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, Static

from anklume_desktop.guide.app import GuideApp
from anklume_desktop.guide.common import GONE
from anklume_desktop.guide.mount import MountScreen
from anklume_desktop.guide.setup import SetupScreen
from devtools import stickimg
from devtools.slowness import scaled
from tests.guide_pilot import assert_snapshot
from tests.service.conftest import Sim

SIZE = (100, 50)
PASSPHRASE = "tiny"  # under 12 characters: the guide warns, then accepts it


def text(app: GuideApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def settle(app: GuideApp, pilot: Pilot[None]) -> None:
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def type_into(pilot: Pilot[None], selector: str, value: str) -> None:
    widget = pilot.app.screen.query_one(selector, Input)
    widget.value = ""
    await pilot.click(selector)
    await pilot.press(*value)


def data_status(sim: Sim) -> dict[str, object]:
    done = sim.ctl("data", "status", "--json")
    assert done.returncode == 0, done.stderr
    status: dict[str, object] = json.loads(done.stdout)
    return status


async def until(pilot: Pilot[None], seen: Callable[[], bool], what: str,
                seconds: float = 15) -> None:
    """Wait for the screen to show ``what`` by itself (anklumed notices a
    plugged or pulled disk within a second or two)."""
    deadline = time.monotonic() + scaled(seconds)
    while not seen():
        if time.monotonic() > deadline:
            raise AssertionError(f"the screen never showed {what} in {scaled(seconds):.0f} s")
        await pilot.pause(0.05)


def disk_rows(app: GuideApp) -> dict[str, str]:
    """The setup screen's disks: name -> "can it be used?"."""
    table = app.screen.query_one("#disks", DataTable)
    return {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[2])
            for i in range(table.row_count)}


def highlighted(app: GuideApp) -> str:
    table = app.screen.query_one("#disks", DataTable)
    return str(table.get_row_at(table.cursor_row)[0])


@contextlib.contextmanager
def plugged(sim: Sim, name: str) -> Iterator[Path]:
    """A blank disk plugged in (a loop device), pulled at the end if still in."""
    loop = stickimg.blank_disk(sim.workdir / f"{name}.img", 300)
    try:
        yield loop
    finally:
        stickimg.detach_if_holding(loop, sim.workdir)  # pulled already: maybe another's now


def pull(loop: Path) -> None:
    subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


def swap(loop: Path, image: Path) -> None:
    """Another disk in place of ``loop``, under its name (its detach may wait
    for udev's or another test's anklumed's look at it to end)."""
    with stickimg.loop_names_held():
        pull(loop)
        assert stickimg.attach_as(loop, image, scaled(5)), f"{loop} stayed busy"


@contextlib.contextmanager
def cryptsetup_held(device: Path) -> Iterator[None]:
    """Any cryptsetup writing ``device``'s LUKS header waits while held.

    cryptsetup takes an flock on /run/cryptsetup/L_<major>:<minor> before it
    writes a header and waits for it: holding it keeps a data-disk setup in
    its "formatting" step for as long as a test needs, whatever the speed of
    the machine (the simulation's few argon2 passes end in a fraction of a second).
    """
    rdev = device.stat().st_rdev
    lock = Path(f"/run/cryptsetup/L_{os.major(rdev)}:{os.minor(rdev)}")
    lock.parent.mkdir(mode=0o700, exist_ok=True)
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def jobs_once_past_checking(sim: Sim) -> str:
    deadline = time.monotonic() + scaled(10)
    while re.search(r" checking ", jobs := sim.ctl("jobs").stdout):
        assert time.monotonic() < deadline, jobs
    return jobs


def candidates(sim: Sim) -> set[str]:
    rows = data_status(sim)["Candidates"]
    assert isinstance(rows, list)
    return {str(row[1]) for row in rows}


def set_up_plain(sim: Sim) -> None:
    """The data disk set up (unencrypted: this kernel has no dm-crypt), mounted."""
    assert sim.data_disk is not None
    done = sim.ctl("data", "setup", "--disk", str(sim.data_disk), "--fs", "btrfs",
                   "--encryption", "none", "--pool-name", "vault", "--yes")
    assert done.returncode == 0, done.stderr


async def start(pilot: Pilot[None]) -> None:
    await pilot.click("#start")
    # A button ignores clicks during its 0.2 s pressed look, as for a person.
    await pilot.pause(0.25)


async def test_setup_flow_then_unlock(sim: Sim) -> None:
    assert sim.stick is not None and sim.data_disk is not None
    stick, disk = sim.stick.loop.name, sim.data_disk.name
    app = GuideApp(address=sim.bus.address)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1")
        await settle(app, pilot)
        assert isinstance(app.screen, SetupScreen)
        table = app.screen.query_one("#disks", DataTable)
        rows = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[2])
                for i in range(table.row_count)}
        # The refusal in plain words: by its code, or the daemon's sentence where
        # the daemon publishes no code yet.
        assert "boot stick" in rows[stick]
        assert rows[disk] == "yes"

        table.move_cursor(row=list(rows).index(stick))
        await pilot.pause()
        assert f"{stick} cannot be used: " in text(app, "#why")
        assert "boot stick" in text(app, "#why")
        await start(pilot)
        assert "Choose a disk that can be used" in text(app, "#warning")

        table.move_cursor(row=list(rows).index(disk))
        await type_into(pilot, "#confirm", disk + "x")
        await start(pilot)
        assert f"Type the disk's name, {disk}" in text(app, "#warning")
        await type_into(pilot, "#confirm", disk)
        await type_into(pilot, "#pool", "Bad Name")
        await type_into(pilot, "#pass1", PASSPHRASE)
        await type_into(pilot, "#pass2", PASSPHRASE + "!")
        await start(pilot)
        assert "differ" in text(app, "#warning")
        await type_into(pilot, "#pass2", PASSPHRASE)
        assert PASSPHRASE not in app.export_screenshot()  # never echoed
        await start(pilot)
        assert "fewer than 12 characters" in text(app, "#warning")
        await start(pilot)  # the second press accepts the short passphrase
        await settle(app, pilot)
        # The daemon refused the pool's name: said, with what to do, nothing erased.
        assert "is not a pool name" in text(app, "#result")
        assert "correct it and try again" in text(app, "#result")
        assert not app.screen.query_one("#start", Button).disabled
        assert data_status(sim)["State"] == "absent"

        await type_into(pilot, "#pool", "vault")
        await type_into(pilot, "#pass1", PASSPHRASE)
        await type_into(pilot, "#pass2", PASSPHRASE)
        await start(pilot)
        await start(pilot)
        assert app.screen.query_one("#pass1", Input).value == ""  # gone from the form
        await settle(app, pilot)
        # This kernel has no device-mapper: LUKS fails for real (the VM tier has
        # the success). The guide says what to do; nothing looks set up.
        assert "It failed. Nothing is left looking set up" in text(app, "#result")
        assert text(app, "#phase").startswith("Step: ")
        assert not app.screen.query_one("#start", Button).disabled
    assert data_status(sim)["State"] == "absent"


async def test_mount_unlocks_the_locked_data_disk(sim: Sim) -> None:
    set_up_plain(sim)
    assert sim.ctl("data", "lock").returncode == 0
    app = GuideApp(address=sim.bus.address)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(app, pilot)
        assert isinstance(app.screen, MountScreen)
        assert "(pool vault) is locked." in text(app, "#what")
        assert not app.screen.query_one("#passphrase", Input).display  # not encrypted
        assert_snapshot(app, "guide_unlock")
        await pilot.click("#go")
        await pilot.pause(0.25)
        await settle(app, pilot)
        assert text(app, "#result") == "Done: the data disk is mounted."
    assert data_status(sim)["State"] == "mounted"


async def test_closing_the_guide_during_a_setup_leaves_the_job_to_the_daemon(sim: Sim) -> None:
    # The person closes the guide while the setup runs (held in its header
    # write): the job is anklumed's, it ends by itself (failing here: no
    # device-mapper), and nothing is left looking set up: no data disk, no
    # pool on PERSIST.
    assert sim.data_disk is not None
    disk = sim.data_disk.name
    before = sim.persist_files()
    app = GuideApp(address=sim.bus.address)
    with cryptsetup_held(sim.data_disk):
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("1")
            await settle(app, pilot)
            screen = app.screen
            assert isinstance(screen, SetupScreen)
            table = screen.query_one("#disks", DataTable)
            table.move_cursor(row=[str(table.get_row_at(i)[0])
                                   for i in range(table.row_count)].index(disk))
            await type_into(pilot, "#confirm", disk)
            await type_into(pilot, "#pool", "vault")
            await type_into(pilot, "#pass1", "a long enough passphrase")
            await type_into(pilot, "#pass2", "a long enough passphrase")
            await start(pilot)
            for _ in range(200):  # the job asked for and started, not ended
                if screen.job:
                    break
                await pilot.pause(0.02)
            assert screen.job.startswith("/org/anklume/Live1/job/")
            # Closed in the middle of it: the job waits on the held header.
            assert re.search(r" running +formatting ", jobs_once_past_checking(sim))
            await app.action_quit()
    job = screen.job.rsplit("/", 1)[1]
    waited = sim.ctl("wait", job)
    assert waited.returncode == 1, waited.stderr  # it went on, then failed: no dm-crypt here
    assert "Traceback" not in waited.stdout + waited.stderr
    jobs = sim.ctl("jobs").stdout
    assert " failed " in jobs and " running " not in jobs, jobs
    status = data_status(sim)
    assert status["State"] == "absent"
    after = sim.persist_files()
    assert sorted(after) == sorted(before)  # no pool configuration left on PERSIST


async def test_the_setup_screen_follows_disks_plugged_in_and_pulled(sim: Sim) -> None:
    # The screen opens with no usable disk; a disk plugged in later appears
    # without reopening it; one pulled goes, and the name typed to confirm
    # erasing it goes with it (a disk plugged in after may take that name).
    assert sim.data_disk is not None
    pull(sim.data_disk)
    deadline = time.monotonic() + scaled(15)
    while str(sim.data_disk) in candidates(sim):
        assert time.monotonic() < deadline, "anklumed never saw the data disk pulled"
        await asyncio.sleep(0.2)
    app = GuideApp(address=sim.bus.address)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1")
        await settle(app, pilot)
        assert isinstance(app.screen, SetupScreen)
        await until(pilot, lambda: bool(disk_rows(app)), "the boot stick's row")
        assert sim.data_disk.name not in disk_rows(app)
        usable = [name for name, why in disk_rows(app).items() if why == "yes"]
        # Other loop devices of this machine may be listed too: the sentence
        # says what the table shows.
        assert ("No disk here can be used" in text(app, "#found")) == (not usable)

        with plugged(sim, "first") as first, plugged(sim, "second") as second:
            await until(pilot, lambda: disk_rows(app).get(first.name) == "yes",
                        f"{first.name} plugged in")
            assert not app.screen.query_one("#found", Static).display  # a disk to use now
            table = app.screen.query_one("#disks", DataTable)
            table.move_cursor(row=list(disk_rows(app)).index(first.name))
            await type_into(pilot, "#confirm", first.name)
            assert second.name in disk_rows(app)  # plugged at once: both seen together

            pull(second)
            await until(pilot, lambda: second.name not in disk_rows(app),
                        f"{second.name} pulled")
            # Another disk went: the person's choice and confirmation stay.
            assert highlighted(app) == first.name
            assert app.screen.query_one("#confirm", Input).value == first.name

            # Another disk plugged in as the first was pulled takes its name: the
            # name typed for the first must not erase it.
            other = sim.workdir / "other.img"
            with other.open("wb") as f:
                f.truncate(400 << 20)
            size = str(app.screen.query_one("#disks", DataTable).get_row(first.name)[1])
            swap(first, other)
            await until(pilot, lambda: str(app.screen.query_one("#disks", DataTable)
                                           .get_row(first.name)[1]) != size
                        if first.name in disk_rows(app) else False, "the other disk")
            assert app.screen.query_one("#confirm", Input).value == ""

            table.move_cursor(row=list(disk_rows(app)).index(first.name))
            await type_into(pilot, "#confirm", first.name)
            pull(first)
            await until(pilot, lambda: first.name not in disk_rows(app), f"{first.name} pulled")
            assert app.screen.query_one("#confirm", Input).value == ""
            assert f"{first.name} was unplugged" in text(app, "#warning")
            await start(pilot)  # on whatever row the cursor fell: nothing starts
            assert "Type the disk's name" in text(app, "#warning") \
                or "Choose a disk that can be used" in text(app, "#warning")
            assert app.screen.job == ""
        assert data_status(sim)["State"] == "absent"


async def test_the_mount_screen_follows_the_disk_and_a_restarted_anklumed(sim: Sim) -> None:
    set_up_plain(sim)
    app = GuideApp(address=sim.bus.address)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await settle(app, pilot)
        assert isinstance(app.screen, MountScreen)
        assert "(pool vault) is already mounted." in text(app, "#what")
        assert app.screen.query_one("#go", Button).disabled

        assert sim.ctl("data", "lock").returncode == 0  # from elsewhere: the tray, a shell
        await until(pilot, lambda: "(pool vault) is locked." in text(app, "#what"),
                    "the disk locked")
        assert not app.screen.query_one("#go", Button).disabled
        assert sim.ctl("data", "unlock").returncode == 0
        await until(pilot, lambda: "is already mounted." in text(app, "#what"),
                    "the disk mounted")
        assert app.screen.query_one("#go", Button).disabled

        # A restarted anklumed is another sender on the bus: the screen says
        # the old one stopped, then follows the new one.
        assert await asyncio.to_thread(sim.stop_daemon)
        await until(pilot, lambda: text(app, "#result") == GONE, "anklumed stopped")
        await asyncio.to_thread(sim.start_daemon)
        await until(pilot, lambda: text(app, "#result") == "", "anklumed back")
        assert sim.ctl("data", "lock").returncode == 0
        await until(pilot, lambda: "(pool vault) is locked." in text(app, "#what"),
                    "the disk locked, told by the new anklumed")
