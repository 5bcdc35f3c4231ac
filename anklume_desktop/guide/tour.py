"""Screen 3: the guided tour, a page a step, with the commands of this system."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Static


@dataclass(frozen=True)
class Step:
    title: str
    text: str
    commands: tuple[tuple[str, str], ...]  # (command line, what it does)


STEPS = (
    Step("Where you are", "anklume Live runs from the USB stick. Two copies of the "
         "system (slots A and B) take turns: an update goes into the other one.",
         (("anklumectl status", "the boot state: which slot, confirmed or not"),
          ("anklumectl slots", "the two slots and their versions"))),
    Step("Updates and rollback", "An update is written into the other slot and checked "
         "before it boots. If the new system fails three times, the previous one "
         "comes back by itself.",
         (("anklumectl update URL", "write a new system into the other slot"),
          ("anklumectl rollback", "boot the other slot next"),
          ("anklumectl jobs", "what is running"))),
    Step("Your data", "Your work lives on a separate encrypted disk. Lock it before "
         "you unplug it.",
         (("anklumectl data status", "the data disk"),
          ("anklumectl data lock", "close it"),
          ("anklumectl data unlock", "open it with its passphrase"))),
    Step("Compartments", "Programs run in Incus containers, each in its own "
         "compartment, stored on the data disk.",
         (("incus list", "the containers"),
          ("incus launch images:debian/13 box", "a new Debian container"))),
)


def available(command: str) -> bool:
    return shutil.which(command.split()[0]) is not None


def render(step: Step) -> str:
    lines = [f"[b]{step.title}[/b]", "", step.text, ""]
    for command, what in step.commands:
        here = "" if available(command) else "  (not installed on this system)"
        lines.append(f"  [b]{command}[/b]: {what}{here}")
    return "\n".join(lines)


class TourScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.pop_screen", "Back"),
                Binding("right,n", "turn(1)", "Next"), Binding("left,p", "turn(-1)", "Back")]

    def __init__(self) -> None:
        super().__init__()
        self.page = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Static(render(STEPS[0]), id="step")
            yield Static(f"1 / {len(STEPS)}", id="page", classes="note")
            yield Button("Next", id="next", variant="primary")
        yield Footer()

    def action_turn(self, by: int) -> None:
        self.page = max(0, min(len(STEPS) - 1, self.page + by))
        self.query_one("#step", Static).update(render(STEPS[self.page]))
        self.query_one("#page", Static).update(f"{self.page + 1} / {len(STEPS)}")
        self.query_one("#next", Button).disabled = self.page == len(STEPS) - 1

    def on_button_pressed(self, _event: Button.Pressed) -> None:
        self.action_turn(1)
