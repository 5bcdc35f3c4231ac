"""What a person sees: a status panel readable at a glance."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from anklume_client import words

STATE_STYLE = {"good": "bold green", "pending": "bold yellow", "rolled-back": "bold red",
               "degraded": "bold red"}
STATE_WORDS = words.BOOT_STATES


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def deadline_words(seconds: int) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def data_words(d: dict[str, Any]) -> str:
    """The data disk in one line, from the DataDisk properties (rich markup)."""
    if not d["Pool"]:
        return f"[bold]{d['State']}[/bold] (set one up with: anklumectl first-boot)"
    return (f"pool [bold]{d['Pool']}[/bold] ({d['Backend']}, {d['Encryption']}): "
            f"[bold]{d['State']}[/bold]")


def _yes(value: str) -> str:
    return {"yes": "yes", "no": "no"}.get(value, "unknown")


def slots_table(status: dict[str, Any]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("slot", "status", "version", "role", "last good"):
        table.add_column(column)
    for name, slot in status["Slots"].items():
        roles = [r for r, on in (("booted", slot["Booted"]), ("primary", slot["Primary"])) if on]
        style = {"ok": "green", "failed": "red", "pending": "yellow"}.get(slot["Status"], "dim")
        table.add_row(name, Text(slot["Status"], style=style), slot["Version"] or "-",
                      ", ".join(roles) or "-", slot["LastGoodAt"] or "-")
    return table


INTEGRITY_WORDS = words.INTEGRITY  # the hand-off's VERITY (anklumed.handoff.VerityState)


def status_panel(s: dict[str, Any]) -> Panel:
    state = s["BootState"]
    head = Text(STATE_WORDS.get(state, state), style=STATE_STYLE.get(state, "bold"))
    lines = Table.grid(padding=(0, 2))
    lines.add_column(style="bold")
    lines.add_column()
    booted = s["BootedSlot"] or "unknown"
    lines.add_row("Running", f"slot {booted}")
    lines.add_row("Next boot", f"slot {s['PrimarySlot'] or '?'}  (attempt {s['BootCount']} "
                  f"of {s['BootAttempts']})")
    lines.add_row("Fallback", f"slot {s['FallbackSlot']}" if s["FallbackSlot"] else "none")
    if s.get("BootDeadline", 0) > 0:  # seconds left; published every few seconds
        lines.add_row("Boot deadline", f"{deadline_words(s['BootDeadline'])} left for this boot "
                      "to complete (then it counts as failed)")
    if s["LastRollback"]:
        rb = s["LastRollback"]
        lines.add_row("Last rollback", f"{rb.get('from', '?')} → {rb.get('to', '?')} "
                      f"({rb.get('reason', '?')}, {rb.get('at', 'time unknown')})")
    toram = s["Toram"]
    lines.add_row("Copy to RAM", f"requested: {toram}, / in RAM: {_yes(s['RootInRam'])}")
    media = "absent" if not s["BootMediaPresent"] else (
        "safe to remove" if s["SafeToRemove"] else "in use, do not remove")
    lines.add_row("Boot stick", f"{s['BootDisk'] or 'not found'} — {media}")
    lines.add_row("OS integrity", INTEGRITY_WORDS.get(s.get("Verity", ""), "unknown"))
    lines.add_row("Memory encryption", s["MemoryEncryption"]
                  + (" (requested)" if s["RamCryptRequested"] else ""))
    if "Data" in s:
        lines.add_row("Data disk", Text.from_markup(data_words(s["Data"])))
    parts: list[Any] = [head, lines, Text(""), slots_table(s)]
    notes = [*s["StateReasons"], *s["Problems"]]
    if s.get("Data", {}).get("Message"):
        notes.append(f"data disk: {s['Data']['Message']}")
    if notes:
        parts += [Text(""), Text("\n".join(f"! {n}" for n in notes), style="yellow")]
    return Panel(Group(*parts), title="anklume Live", expand=False)
