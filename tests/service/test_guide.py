"""The welcome guide's data-disk screens driving the real anklumed of the
simulation (textual Pilot, in this process; the guide as root, so polkit is
not asked: the polkit refusal is the desktop tier's)."""

from __future__ import annotations

import json

from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, Static

from anklume_desktop.guide.app import GuideApp
from anklume_desktop.guide.mount import MountScreen
from anklume_desktop.guide.setup import SetupScreen
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
    assert sim.data_disk is not None
    done = sim.ctl("data", "setup", "--disk", str(sim.data_disk), "--fs", "btrfs",
                   "--encryption", "none", "--pool-name", "vault", "--yes")
    assert done.returncode == 0, done.stderr
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
    # The person closes the guide as soon as the setup started: the job is
    # anklumed's, it ends by itself (failing here: no device-mapper), and
    # nothing is left looking set up: no data disk, no pool on PERSIST.
    assert sim.data_disk is not None
    disk = sim.data_disk.name
    before = sim.persist_files()
    app = GuideApp(address=sim.bus.address)
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
        assert " running " in sim.ctl("jobs").stdout  # closed in the middle of it
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
