"""Screen 2: mount an existing disk: unlock this stick's data disk, or adopt
one set up from another stick."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from anklume_desktop import words
from anklume_desktop.daemon import DaemonError, DataDisk, DataState, JobState, Progress
from anklume_desktop.guide.common import daemon_of, probed_data


class MountScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self) -> None:
        super().__init__()
        self.data: DataDisk | None = None

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
        self.run_worker(self.load(), exclusive=True, group="load")

    async def load(self) -> None:
        try:
            self.data = data = await probed_data(await daemon_of(self))
        except DaemonError as e:
            self.say(words.explain_error(e), error=True)
            return
        what, go = self.query_one("#what", Static), self.query_one("#go", Button)
        table = self.query_one("#adoptable", DataTable)
        table.display = False
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
            table.display = True
            for disk in data.adoptable:
                table.add_row(disk.device, disk.pool, disk.luks_uuid, key=disk.device)
            go.label, go.disabled = "Use this disk", False
        elif data.state == DataState.ABSENT:
            what.update("No data disk from another stick was found. To make one, choose "
                        "'Set up the encrypted data disk'.")
        else:
            what.update(f"The data disk is in trouble: {data.message}")

    def say(self, text: str, error: bool = False) -> None:
        result = self.query_one("#result", Static)
        result.update(text)
        result.set_class(error, "error")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        field = self.query_one("#passphrase", Input)
        if event.button.id != "go" or self.data is None:
            return
        if not field.value and field.display:
            self.say("Type the passphrase.", error=True)
            return
        passphrase, field.value = field.value.encode(), ""
        event.button.disabled = True
        self.run_worker(self.run_job(passphrase), exclusive=True, group="job")

    async def run_job(self, passphrase: bytes) -> None:
        assert self.data is not None
        try:
            daemon = await daemon_of(self)
            if self.data.state == DataState.LOCKED:
                job = await daemon.unlock(passphrase)
            else:
                table = self.query_one("#adoptable", DataTable)
                key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
                job = await daemon.adopt(str(key), passphrase)
            outcome = await daemon.follow(job, self.show_progress)
        except DaemonError as e:
            self.say(words.explain_error(e), error=True)
            self.query_one("#go", Button).disabled = False
            return
        if outcome.state == JobState.SUCCEEDED:
            self.say("Done: the data disk is mounted.")
            return
        left = (await daemon.data_disk()).attempts_left
        self.say(words.explain_outcome(outcome)
                 + (f"\n{left} attempts left before unlocking pauses." if left else ""),
                 error=True)
        self.query_one("#go", Button).disabled = False

    def show_progress(self, progress: Progress) -> None:
        self.query_one("#phase", Static).update(f"Step: {progress.phase or 'starting'}")
