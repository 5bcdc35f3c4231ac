"""The welcome guide's screens that need no daemon, driven by textual's Pilot:
the welcome with anklumed unreachable, the tour, the shortcuts, dismissing it.
(The data-disk screens drive the real anklumed: tests/service/test_guide.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, Select, Static

from anklume_desktop import words
from anklume_desktop.daemon import AdoptableDisk, Backend, DataDisk, DataState, Disk
from anklume_desktop.guide import first_login, keybindings, tour
from anklume_desktop.guide.app import GuideApp, WelcomeScreen
from anklume_desktop.guide.mount import MountScreen
from anklume_desktop.guide.passphrase import Verdict, judge
from anklume_desktop.guide.shortcuts import ShortcutsScreen
from anklume_desktop.guide.tour import TourScreen
from tests.guide_pilot import assert_snapshot

SIZE = (90, 30)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GuideApp:
    monkeypatch.setenv("ANKLUME_KEYBINDINGS", str(keybindings.PACKAGED))
    # No daemon at this address: the guide must say so, not crash.
    return GuideApp(address=f"unix:path={tmp_path}/no-bus", state_dir=tmp_path / "state")


def text(app: GuideApp, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


async def test_welcome_says_the_daemon_is_unreachable(app: GuideApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, WelcomeScreen)
        assert "cannot reach the system bus" in text(app, "#data-state")
        assert_snapshot(app, "guide_welcome_unreachable")


async def test_the_guide_can_open_on_a_screen_over_the_welcome(tmp_path: Path) -> None:
    # The tray's "Unlock the data disk" opens the guide on its mount screen.
    app = GuideApp(address=f"unix:path={tmp_path}/no-bus", state_dir=tmp_path / "state",
                   opening="mount")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, MountScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, WelcomeScreen)


async def test_the_four_choices_open_their_screens(app: GuideApp) -> None:
    async with app.run_test(size=SIZE) as pilot:
        for key, screen in (("3", TourScreen), ("4", ShortcutsScreen)):
            await pilot.press(key)
            assert isinstance(app.screen, screen)
            await pilot.press("escape")
            assert isinstance(app.screen, WelcomeScreen)
        await pilot.click("#setup")
        assert type(app.screen).__name__ == "SetupScreen"
        await pilot.press("escape")
        await pilot.click("#mount")
        assert type(app.screen).__name__ == "MountScreen"


def absent(probed: bool) -> DataDisk:
    found = (AdoptableDisk("/dev/sdb", "vault", "1234"),) if probed else ()
    return DataDisk(state=DataState.ABSENT, pool="", encrypted=False, device="",
                    message="", pulled=False, attempts_left=0, probed=probed,
                    candidates=(), adoptable=found, filesystems=())


class UnprobedDaemon:
    """FAKE anklumed just started: what it says first (to the welcome screen,
    then to the mount screen following it) comes before its first look at the
    disks (no disk known yet); its change after that look comes when ``look``
    is set."""

    def __init__(self) -> None:
        self.look = asyncio.Event()
        self.followed = 0

    async def data_disk(self) -> DataDisk:
        return absent(probed=False)

    async def follow_data(self, changed: Callable[[DataDisk], None],
                          _gone: Callable[[], None]) -> Callable[[], None]:
        async def looked() -> None:
            await self.look.wait()
            changed(absent(probed=True))

        changed(absent(probed=False))
        task = asyncio.create_task(looked())
        self.followed += 1

        def unfollow() -> None:
            self.followed -= 1
            task.cancel()
        return unfollow


async def test_mount_waits_for_the_first_look_at_the_disks(
        app: GuideApp, monkeypatch: pytest.MonkeyPatch) -> None:
    # The guide opens at the first login, maybe before anklumed looked at the
    # disks: its empty list then is "not looked yet", not "none to adopt".
    fake = UnprobedDaemon()

    async def daemon() -> UnprobedDaemon:
        return fake

    monkeypatch.setattr(app, "daemon", daemon)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, MountScreen)
        assert fake.followed == 1
        assert text(app, "#what") == "Looking at the disks…"
        fake.look.set()
        await pilot.pause()
        assert "set up from another anklume stick" in text(app, "#what")
        await pilot.press("escape")
        await pilot.pause()
        assert fake.followed == 0  # dismissed: followed no more


async def test_the_setup_screen_says_why_it_cannot_list_disks(app: GuideApp) -> None:
    # Screen 1's form, and what it says when anklumed does not answer.
    async with app.run_test(size=(100, 50)) as pilot:
        await pilot.press("1")
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert type(app.screen).__name__ == "SetupScreen"
        assert "cannot reach the system bus" in text(app, "#result")
        assert_snapshot(app, "guide_setup_unreachable")


SDB = Disk(name="sdb", device="/dev/sdb", model="FAKE Disk", size=64 << 30, bus="usb",
           serial="F1", by_id="", contents=(), refused="", refused_code="")


class ProbedDaemon:
    """FAKE anklumed that has looked at the disks: a blank disk, and the
    filesystems this system can make."""

    def __init__(self, filesystems: tuple[Backend, ...]) -> None:
        self.data = DataDisk(state=DataState.ABSENT, pool="", encrypted=False, device="",
                             message="", pulled=False, attempts_left=3, probed=True,
                             candidates=(SDB,), adoptable=(), filesystems=filesystems)

    async def data_disk(self) -> DataDisk:
        return self.data

    async def follow_data(self, changed: Callable[[DataDisk], None],
                          _gone: Callable[[], None]) -> Callable[[], None]:
        changed(self.data)
        return lambda: None


async def setup_screen_of(app: GuideApp, monkeypatch: pytest.MonkeyPatch,
                          filesystems: tuple[Backend, ...], pilot: Pilot[None]) -> Select[Backend]:
    fake = ProbedDaemon(filesystems)

    async def daemon() -> ProbedDaemon:
        return fake

    monkeypatch.setattr(app, "daemon", daemon)
    await pilot.press("1")
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()
    assert type(app.screen).__name__ == "SetupScreen"
    select: Select[Backend] = app.screen.query_one("#backend", Select)
    return select


def offered(select: Select[Backend]) -> list[object]:
    # textual 2's Select has no public list of its options: its private one.
    return [value for _label, value in select._options if value != Select.BLANK]


async def test_setup_offers_zfs_first_where_the_system_can_make_it(
        app: GuideApp, monkeypatch: pytest.MonkeyPatch) -> None:
    async with app.run_test(size=(100, 50)) as pilot:
        select = await setup_screen_of(app, monkeypatch, (Backend.ZFS, Backend.BTRFS), pilot)
        assert select.value == Backend.ZFS and not select.disabled
        assert offered(select) == [
            Backend.ZFS, Backend.BTRFS]
        assert not app.screen.query_one("#fs-note", Static).display


async def test_setup_without_zfs_offers_btrfs_and_says_why(
        app: GuideApp, monkeypatch: pytest.MonkeyPatch) -> None:
    # A --no-zfs or Arch image, or a --zfs one under Secure Boot: ZFS is not offered.
    async with app.run_test(size=(100, 50)) as pilot:
        select = await setup_screen_of(app, monkeypatch, (Backend.BTRFS,), pilot)
        assert select.value == Backend.BTRFS
        assert offered(select) == [
            Backend.BTRFS]
        assert text(app, "#fs-note") == words.ZFS_MISSING
        assert_snapshot(app, "guide_setup_no_zfs")


async def test_setup_where_no_filesystem_can_be_made_starts_nothing(
        app: GuideApp, monkeypatch: pytest.MonkeyPatch) -> None:
    async with app.run_test(size=(100, 50)) as pilot:
        select = await setup_screen_of(app, monkeypatch, (), pilot)
        assert select.disabled and select.value == Select.BLANK
        assert text(app, "#fs-note") == words.NO_FILESYSTEM
        app.screen.query_one("#confirm", Input).value = "sdb"
        await pilot.click("#start")
        assert text(app, "#warning") == words.NO_FILESYSTEM


async def test_the_tour_turns_its_pages_and_names_missing_commands(
        app: GuideApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anklume_desktop.guide.tour.shutil.which",
                        lambda cmd: "/usr/bin/x" if cmd != "incus" else None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        assert "Where you are" in text(app, "#step")
        assert "anklumectl status" in text(app, "#step")
        assert_snapshot(app, "guide_tour_first")
        await pilot.click("#next")
        assert "Updates and rollback" in text(app, "#step")
        for _ in tour.STEPS:  # past the end: stays on the last page
            await pilot.press("right")
        assert "Compartments" in text(app, "#step")
        assert "incus list" in text(app, "#step")
        assert "not installed on this system" in text(app, "#step")
        assert app.screen.query_one("#next", Button).disabled
        await pilot.press("left")
        assert "Your data" in text(app, "#step")


async def test_shortcuts_come_from_the_keybindings_file(
        app: GuideApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "KEYBINDINGS.txt"
    mine.write_text("# a comment\nSway:\nSuper+Enter    open a terminal (foot)\n"
                    "Alt+Shift\tswitch the layout\nnot a shortcut line\n")
    monkeypatch.setenv("ANKLUME_KEYBINDINGS", str(mine))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        table = app.screen.query_one("#shortcuts", DataTable)
        rows = [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
        assert rows == [("Sway", "Super+Enter", "open a terminal (foot)"),
                        ("Sway", "Alt+Shift", "switch the layout")]


# The screen names the file it read: a fixed place, so that the snapshot does
# not depend on where the repository is checked out.
SNAPSHOT_KEYBINDINGS = Path("/tmp/anklume-guide-snapshot/KEYBINDINGS.txt")


@pytest.fixture
def fixed_keybindings(monkeypatch: pytest.MonkeyPatch) -> None:
    SNAPSHOT_KEYBINDINGS.parent.mkdir(exist_ok=True)
    SNAPSHOT_KEYBINDINGS.write_text(keybindings.PACKAGED.read_text())
    monkeypatch.setenv("ANKLUME_KEYBINDINGS", str(SNAPSHOT_KEYBINDINGS))


async def test_shortcuts_screen_with_the_shipped_file(app: GuideApp,
                                                      fixed_keybindings: None) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        table = app.screen.query_one("#shortcuts", DataTable)
        assert table.row_count == len(keybindings.parse(keybindings.PACKAGED.read_text()))
        assert_snapshot(app, "guide_shortcuts")


async def test_a_missing_keybindings_file_is_said(app: GuideApp, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANKLUME_KEYBINDINGS", str(tmp_path / "absent.txt"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        assert "cannot be read" in text(app, "#source")


async def test_dismissing_stops_the_login_start(app: GuideApp) -> None:
    assert first_login.opens_at_login(app.state_dir, DataState.ABSENT)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.click("#dismiss")
    assert not first_login.opens_at_login(app.state_dir, DataState.ABSENT)
    assert not list(app.state_dir.glob("*.tmp"))


def test_the_guide_opens_at_login_only_until_the_disk_is_set_up(tmp_path: Path) -> None:
    assert first_login.opens_at_login(tmp_path, DataState.ABSENT)
    assert first_login.opens_at_login(tmp_path, DataState.UNKNOWN)
    assert not first_login.opens_at_login(tmp_path, DataState.LOCKED)
    assert not first_login.opens_at_login(tmp_path, DataState.MOUNTED)


def test_passphrase_rule() -> None:
    assert judge("", "") == Verdict.EMPTY
    assert judge("correct horse battery", "correct horse batterY") == Verdict.MISMATCH
    assert judge("short", "short") == Verdict.SHORT
    assert judge("x" * 11, "x" * 11) == Verdict.SHORT
    assert judge("x" * 12, "x" * 12) == Verdict.OK


def test_first_login_check_says_whether_it_would_open(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anklume_desktop.guide.__main__ import main

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    argv = ["--first-login", "--check", "--bus", f"unix:path={tmp_path}/no-bus"]
    assert main(argv) == 0  # anklumed unreachable: the guide opens and says so
    first_login.dismiss(first_login.state_dir())
    assert main(argv) == 1
