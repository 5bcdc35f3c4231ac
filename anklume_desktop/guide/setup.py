"""Screen 1: set up the encrypted data disk (the first-boot flow).

The disk table says why each refused disk is refused; the person confirms by
typing the disk's name, types the passphrase twice (never echoed) and is
warned under 12 characters; the job's progress follows; a failure says what
to do. The passphrase leaves the inputs as soon as the job is asked for.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.coordinate import Coordinate
from textual.widgets import Button, DataTable, Footer, Header, Input, ProgressBar, Select, Static

from anklume_desktop import words
from anklume_desktop.daemon import (
    Backend,
    DaemonError,
    DataDisk,
    DataState,
    Disk,
    Encryption,
    JobState,
)
from anklume_desktop.daemon import Progress as JobProgress
from anklume_desktop.guide.common import FollowsData, daemon_of
from anklume_desktop.guide.passphrase import MESSAGES, Verdict, judge


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _same_disk(shown: Disk, now: Disk | None) -> bool:
    """The same disk under the same name: a disk plugged in where one was
    pulled may take its name (sdb again), and must not inherit a confirmation
    typed for the other. Its contents and refusal may change; not these."""
    return now is not None and (shown.device, shown.serial, shown.by_id, shown.size,
                                shown.model) == (now.device, now.serial, now.by_id, now.size,
                                                 now.model)


class SetupScreen(FollowsData):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self) -> None:
        super().__init__()
        self.disks: dict[str, Disk] = {}
        self.short_accepted = ""  # the short passphrase the person confirmed once
        self.job = ""
        self.set_up = False  # this screen's setup succeeded
        self.offered: tuple[Backend, ...] | None = None  # the filesystems shown

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield Static("Choose the disk that will hold your data. It will be ERASED "
                         "and encrypted.", id="intro")
            yield Static("Looking at the disks…", id="found", markup=False)
            table: DataTable[str] = DataTable(id="disks", cursor_type="row")
            yield table
            yield Static("", id="why", markup=False)
            yield Input(placeholder="type the disk's name to confirm (erases it)",
                        id="confirm")
            yield Input(value="anklume", placeholder="pool name", id="pool")
            # Offered once anklumed says what this system can make.
            yield Select([], prompt="filesystem", disabled=True, id="backend")
            yield Static("", id="fs-note", markup=False)
            yield Input(placeholder="passphrase", password=True, id="pass1")
            yield Input(placeholder="passphrase again", password=True, id="pass2")
            yield Static("", id="warning", markup=False, classes="warning")
            yield Button("Start", id="start", variant="error")
            yield Static("", id="phase", markup=False)
            yield ProgressBar(id="progress", show_eta=False)
            yield Static("", id="result", markup=False)
        yield Footer()

    async def on_mount(self) -> None:
        table = self.query_one("#disks", DataTable)
        table.add_columns("disk", "size", "can it be used?", "model", "holds")
        self.query_one("#fs-note", Static).display = False  # until anklumed says
        # Shown once a job runs: idle, an indeterminate bar would only bounce.
        self.query_one("#progress", ProgressBar).display = False
        self.follow()

    def unreachable(self, error: DaemonError) -> None:
        self.query_one("#found", Static).display = False
        super().unreachable(error)

    def show(self, data: DataDisk) -> None:
        if data.candidates != tuple(self.disks.values()):
            self.show_disks(data.candidates)
        found = self.query_one("#found", Static)
        found.update(sentence := self.found(data))
        found.display = bool(sentence)  # no blank line above the table
        self.query_one("#start", Button).disabled = data.state != DataState.ABSENT
        if data.filesystems != self.offered:
            self.show_filesystems(data.filesystems)

    def show_filesystems(self, offered: tuple[Backend, ...]) -> None:
        """Only what this system can make, the preferred one chosen (ZFS where
        it works); and why ZFS is not there, when it is not."""
        self.offered = offered
        select: Select[Backend] = self.query_one("#backend", Select)
        select.set_options([(b.value, b) for b in offered])
        if offered:
            select.value = offered[0]
        select.disabled = not offered
        note = self.query_one("#fs-note", Static)
        note.update(text := words.filesystems_note(offered))
        note.display = bool(text)

    def found(self, data: DataDisk) -> str:
        if data.state != DataState.ABSENT:
            return "" if self.set_up else (
                f"A data disk is already set up (pool {data.pool or '?'}, {data.state}). "
                "Use 'Mount an existing disk' instead.")
        if not data.candidates:
            return "No disk was found. Plug one in: it appears here by itself."
        if not any(disk.usable for disk in data.candidates):
            return "No disk here can be used. Plug one in: it appears here by itself."
        return ""

    def show_disks(self, candidates: tuple[Disk, ...]) -> None:
        """The table anew, the highlighted disk kept if it is still there; a
        confirmation typed for a disk that went is cleared."""
        kept = self.selected()
        fresh = {disk.name: disk for disk in candidates}
        if kept is not None and not _same_disk(kept, fresh.get(kept.name)):
            if self.query_one("#confirm", Input).value:
                self.query_one("#warning", Static).update(
                    f"{kept.name} was unplugged: choose the disk again.")
            self.query_one("#confirm", Input).value = ""
            kept = None
        self.disks = fresh
        table = self.query_one("#disks", DataTable)
        table.clear()
        for disk in candidates:
            table.add_row(disk.name, words.human_size(disk.size),
                          words.refusal(disk) or "yes", disk.model[:20] or "-",
                          _short(", ".join(disk.contents) or "nothing known"), key=disk.name)
        if kept is not None:
            table.move_cursor(row=table.get_row_index(kept.name))
        self.explain()

    def selected(self) -> Disk | None:
        table = self.query_one("#disks", DataTable)
        if not self.disks or table.cursor_row < 0 or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        return self.disks.get(str(key))

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self.explain()

    def explain(self) -> None:
        disk = self.selected()
        why = self.query_one("#why", Static)
        if disk is None:
            why.update("")
        elif disk.usable:
            why.update(f"{disk.name}: type '{disk.name}' below to confirm that it may be "
                       "erased.")
        else:
            why.update(f"{disk.name} cannot be used: {words.refusal(disk)}.")

    def check(self) -> tuple[Disk, str, bytes] | None:
        """The request when everything is in order, else None (and why, on screen)."""
        warning = self.query_one("#warning", Static)
        disk = self.selected()
        if disk is None or not disk.usable:
            warning.update("Choose a disk that can be used.")
            return None
        if self.query_one("#confirm", Input).value != disk.name:
            warning.update(f"Type the disk's name, {disk.name}, to confirm.")
            return None
        if not isinstance(self.query_one("#backend", Select).value, Backend):
            warning.update(words.NO_FILESYSTEM if self.offered == () else
                           "Choose the filesystem.")
            return None
        pool = self.query_one("#pool", Input).value.strip()
        if not pool:
            warning.update("Give the pool a name.")
            return None
        first = self.query_one("#pass1", Input).value
        verdict = judge(first, self.query_one("#pass2", Input).value)
        if verdict == Verdict.SHORT and self.short_accepted != first:
            self.short_accepted = first
            warning.update(MESSAGES[verdict])
            return None
        if verdict not in (Verdict.OK, Verdict.SHORT):
            warning.update(MESSAGES[verdict])
            return None
        warning.update("")
        return disk, pool, first.encode()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id != "start":
            return
        request = self.check()
        if request is None:
            return
        for name in ("#pass1", "#pass2"):
            self.query_one(name, Input).value = ""
        self.short_accepted = ""
        event.button.disabled = True
        self.busy = True  # the table holds still under the person until the job ends
        self.run_worker(self.run_setup(*request), exclusive=True, group="job")

    async def run_setup(self, disk: Disk, pool: str, passphrase: bytes) -> None:
        await self.set_up_disk(disk, pool, passphrase)
        self.job_ended()

    async def set_up_disk(self, disk: Disk, pool: str, passphrase: bytes) -> None:
        backend = self.query_one("#backend", Select).value
        assert isinstance(backend, Backend)
        self.say(f"Setting up {disk.name}… closing the guide does not stop it.")
        self.query_one("#progress", ProgressBar).display = True
        try:
            daemon = await daemon_of(self)
            self.job = await daemon.setup(disk.device, pool, backend, Encryption.LUKS2,
                                          passphrase)
            outcome = await daemon.follow(self.job, self.show_progress)
        except DaemonError as e:
            self.say(words.explain_error(e), error=True)
            self.query_one("#start", Button).disabled = False
            return
        if outcome.state == JobState.SUCCEEDED:
            self.set_up = True
            self.say(f"Done: your data now lives on {disk.name}, encrypted, pool {pool}. "
                     "It is mounted at each boot once unlocked.")
        else:
            self.say(words.explain_outcome(outcome), error=True)
            self.query_one("#start", Button).disabled = False

    def show_progress(self, progress: JobProgress) -> None:
        self.query_one("#phase", Static).update(f"Step: {progress.phase or 'starting'}")
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=progress.total or None, progress=progress.done)
