"""Screen 4: the desktop's keyboard shortcuts, from KEYBINDINGS.txt."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from anklume_desktop.guide import keybindings


class ShortcutsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "Back")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="source", markup=False, classes="note")
        table: DataTable[str] = DataTable(id="shortcuts", cursor_type="row")
        yield table
        yield Footer()

    def on_mount(self) -> None:
        path = keybindings.path()
        source = self.query_one("#source", Static)
        try:
            found = keybindings.parse(path.read_text())
        except OSError as e:
            source.update(f"The shortcuts cannot be read from {path}: {e.strerror}")
            return
        except UnicodeDecodeError:
            source.update(f"The shortcuts cannot be read from {path}: it is not text")
            return
        source.update(f"From {path}")
        table = self.query_one("#shortcuts", DataTable)
        table.add_columns("where", "keys", "what")
        for shortcut in found:
            table.add_row(shortcut.section, shortcut.keys, shortcut.action)
