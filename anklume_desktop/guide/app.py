"""The guide's application and its welcome screen."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Static

from anklume_desktop import words
from anklume_desktop.daemon import Daemon, DaemonError, DataState
from anklume_desktop.guide import first_login

DATA_WORDS = {
    DataState.ABSENT: "not set up yet: your work is lost at shutdown until it is",
    DataState.LOCKED: "set up and locked: mount it to use it",
    DataState.UNLOCKED: "unlocked",
    DataState.MOUNTED: "set up and mounted: your work is kept",
    DataState.ERROR: "in trouble",
    DataState.UNKNOWN: "unknown",
}


class GuideApp(App[None]):
    TITLE = "anklume: welcome"
    CSS = """
    Screen { align: center top; }
    #menu { width: 60; height: auto; }
    #menu Button { width: 100%; margin: 0 0 1 0; }
    .note { color: $text-muted; margin: 1 0; }
    .warning { color: $warning; }
    .error { color: $error; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "Quit")]

    def __init__(self, address: str | None = None, state_dir: Path | None = None,
                 opening: str = "") -> None:
        """``opening``: one of the welcome screen's choices to open over it
        (the tray's "Unlock" opens ``mount``), else the welcome screen."""
        super().__init__()
        self.address = address
        self.state_dir = state_dir or first_login.state_dir()
        self.opening = opening
        self._daemon: Daemon | None = None

    async def daemon(self) -> Daemon:
        """The connection, made at first use (DaemonError when unreachable)."""
        if self._daemon is None or not self._daemon.bus.connected:
            self._daemon = await Daemon.connect(self.address)
        return self._daemon

    def on_mount(self) -> None:
        welcome = WelcomeScreen()
        self.push_screen(welcome)
        if self.opening:
            welcome.action_open(self.opening)

    async def on_unmount(self) -> None:
        # A running job is anklumed's: closing the guide stops following it, not it.
        if self._daemon is not None:
            await self._daemon.close()


class WelcomeScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "open('setup')", "Set up"),
        Binding("2", "open('mount')", "Mount"),
        Binding("3", "open('tour')", "Tour"),
        Binding("4", "open('shortcuts')", "Shortcuts"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="menu"):
            yield Static("Welcome to anklume Live.", id="hello")
            yield Static("Data disk: …", id="data-state", markup=False, classes="note")
            yield Button("1  Set up the encrypted data disk", id="setup", variant="primary")
            yield Button("2  Mount an existing disk", id="mount")
            yield Button("3  Guided tour", id="tour")
            yield Button("4  Keyboard shortcuts", id="shortcuts")
            yield Button("Do not open this guide at login again", id="dismiss")
        yield Footer()

    async def on_mount(self) -> None:
        self.run_worker(self.show_state(), exclusive=True)

    async def show_state(self) -> None:
        label = self.query_one("#data-state", Static)
        app = self.app
        assert isinstance(app, GuideApp)
        try:
            data = await (await app.daemon()).data_disk()
        except DaemonError as e:
            label.update(f"Data disk: unknown. {words.explain_error(e)}")
            label.set_class(True, "error")
            return
        label.update(f"Data disk: {DATA_WORDS[data.state]}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "dismiss":
            app = self.app
            assert isinstance(app, GuideApp)
            first_login.dismiss(app.state_dir)
            event.button.label = "This guide will not open at login again"
            event.button.disabled = True
        elif event.button.id:
            self.action_open(event.button.id)

    def action_open(self, name: str) -> None:
        from anklume_desktop.guide import screens

        self.app.push_screen(screens.SCREENS[name]())
