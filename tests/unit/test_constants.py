"""Each shared constant is written once, in the module that owns its concept;
everything else imports it, so a change cannot reach half of the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from anklumed.data.poolconf import LABEL_PREFIX
from anklumed.slots.bundle import COMPATIBLE, KEYS_DIR

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("anklumed", "anklumectl", "anklume_image", "devtools")


def string_literals(path: Path) -> list[str]:
    """Every string constant of a file, the fixed parts of f-strings included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def places(value: str) -> list[str]:
    return [str(path.relative_to(ROOT))
            for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))
            for literal in string_literals(path)
            if literal == value]


@pytest.mark.parametrize(("value", "owner"), [
    (COMPATIBLE, "anklumed/slots/bundle.py"),
    (str(KEYS_DIR), "anklumed/slots/bundle.py"),
    (LABEL_PREFIX, "anklumed/data/poolconf.py"),
])
def test_written_once_in_its_owner(value: str, owner: str) -> None:
    assert places(value) == [owner]
