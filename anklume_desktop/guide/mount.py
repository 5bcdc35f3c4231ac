"""Screen 2: mount an existing disk: unlock this stick's data disk, or adopt
one set up from another stick."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.coordinate import Coordinate
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from anklume_desktop import words
from anklume_desktop.daemon import DaemonError, DataDisk, DataState, JobState, Progress
from anklume_desktop.guide.common import FollowsData, daemon_of


class MountScreen(FollowsData):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self) -> None:
        super().__init__()
        self.data: DataDisk | None = None  # the state on screen, what "go" acts on

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static("Looking at the disks…", id="what", markup=False)
            table: DataTable[str] = DataTable(id="adoptable", cursor_type="row")
            yield table
            yield Input(placeholder="passphrase", password=True, id="passphrase")
            yield Button("Unlock", id="go", variant="primary", disabled=True)
            yield Static("", id="phase", markup=False)
            yield Static("", id="result", markup=False)
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#adoptable", DataTable).add_columns("disk", "pool", "LUKS UUID")
        self.follow()

    def show(self, data: DataDisk) -> None:
        """What can be done with the disk as it is now; shown again at each
        change (locked, unlocked, pulled, a disk from another stick plugged)."""
        self.data = data
        what, go = self.query_one("#what", Static), self.query_one("#go", Button)
        go.label, go.disabled = "Unlock", True
        self.query_one("#passphrase", Input).display = True
        self.show_adoptable(data)
        if data.state == DataState.LOCKED:
            what.update(f"The data disk (pool {data.pool}) is locked."
                        + (" Type its passphrase." if data.encrypted else "")
                        + (" It is unplugged: plug it in first." if data.pulled else ""))
            self.query_one("#passphrase", Input).display = data.encrypted
            go.disabled = False
        elif data.state in (DataState.MOUNTED, DataState.UNLOCKED):
            what.update(f"The data disk (pool {data.pool}) is already {data.state}.")
        elif data.state == DataState.ABSENT and data.adoptable:
            what.update("These disks were set up from another anklume stick. Choose one "
                        "and type its passphrase to use it here.")
            go.label, go.disabled = "Use this disk", False
        elif data.state == DataState.ABSENT:
            what.update("No data disk from another stick was found. To make one, choose "
                        "'Set up the encrypted data disk'.")
        else:
            what.update(f"The data disk is in trouble: {data.message}")

    def show_adoptable(self, data: DataDisk) -> None:
        """The disks to adopt (when there is no data disk), the highlighted one
        kept if it is still there."""
        table = self.query_one("#adoptable", DataTable)
        shown = data.adoptable if data.state == DataState.ABSENT else ()
        table.display = bool(shown)
        kept = self.chosen()
        table.clear()
        for disk in shown:
            table.add_row(disk.device, disk.pool, disk.luks_uuid, key=disk.device)
        if kept in {disk.device for disk in shown}:
            table.move_cursor(row=table.get_row_index(kept))

    def chosen(self) -> str:
        """The highlighted disk to adopt, "" when none."""
        table = self.query_one("#adoptable", DataTable)
        if table.row_count == 0 or table.cursor_row < 0:
            return ""
        return str(table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        field = self.query_one("#passphrase", Input)
        if event.button.id != "go" or self.data is None:
            return
        if not field.value and field.display:
            self.say("Type the passphrase.", error=True)
            return
        passphrase, field.value = field.value.encode(), ""
        event.button.disabled = True
        self.busy = True  # the view holds still until the job ends
        self.run_worker(self.run_job(self.data, passphrase), exclusive=True, group="job")

    async def run_job(self, data: DataDisk, passphrase: bytes) -> None:
        try:
            self.say(*await self.unlock_or_adopt(data, passphrase))
        except DaemonError as e:
            self.say(words.explain_error(e), error=True)
        self.job_ended()  # the newest state: what "go" may do now

    async def unlock_or_adopt(self, data: DataDisk, passphrase: bytes) -> tuple[str, bool]:
        """What the job came to, and whether it is a failure."""
        daemon = await daemon_of(self)
        if data.state == DataState.LOCKED:
            job = await daemon.unlock(passphrase)
        else:
            job = await daemon.adopt(self.chosen(), passphrase)
        outcome = await daemon.follow(job, self.show_progress)
        if outcome.state == JobState.SUCCEEDED:
            return "Done: the data disk is mounted.", False
        left = (await daemon.data_disk()).attempts_left
        return (words.explain_outcome(outcome)
                + (f"\n{left} attempts left before unlocking pauses." if left else "")), True

    def show_progress(self, progress: Progress) -> None:
        self.query_one("#phase", Static).update(f"Step: {progress.phase or 'starting'}")
