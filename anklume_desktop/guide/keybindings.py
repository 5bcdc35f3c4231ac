"""The desktop's keyboard shortcuts, read from the image's KEYBINDINGS.txt.

One shortcut a line: the keys, two or more spaces (or a tab), what they do.
``#`` starts a comment; a line ending with ``:`` starts a section.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_PATH = Path("/usr/share/anklume/KEYBINDINGS.txt")
PACKAGED = Path(__file__).with_name("KEYBINDINGS.txt")
_SPLIT = re.compile(r"\t+|\s{2,}")


@dataclass(frozen=True)
class Shortcut:
    section: str
    keys: str
    action: str


def parse(text: str) -> list[Shortcut]:
    section, found = "", []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if line.endswith(":"):
            section = line[:-1].strip()
            continue
        parts = _SPLIT.split(line.strip(), maxsplit=1)
        if len(parts) == 2:
            found.append(Shortcut(section, parts[0], parts[1].strip()))
    return found


def path() -> Path:
    """``ANKLUME_KEYBINDINGS``, else the image's file, else the copy shipped here."""
    given = os.environ.get("ANKLUME_KEYBINDINGS")
    if given:
        return Path(given)
    return IMAGE_PATH if IMAGE_PATH.exists() else PACKAGED
