"""Every test file the repository names (in comments, docstrings, README,
pyproject) exists: a reader sent to a missing file trusts a check nobody runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIPPED = {".venv", ".git", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache",
           ".pytest_cache"}
NAMED_PATH = re.compile(r"\btests/[A-Za-z0-9_/]*\.py\b")
NAMED_FILE = re.compile(r"(?<![A-Za-z0-9_/.])test_[A-Za-z0-9_]+\.py\b")


def text_files() -> list[Path]:
    found = []
    for suffix in ("*.py", "*.toml", "*.md"):
        for path in ROOT.rglob(suffix):
            if not SKIPPED.intersection(path.relative_to(ROOT).parts):
                found.append(path)
    return sorted(found)


def named(pattern: re.Pattern[str]) -> dict[str, list[str]]:
    """Each name the pattern finds, with where it is named."""
    where: dict[str, list[str]] = {}
    for path in text_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in pattern.findall(line):
                where.setdefault(match, []).append(f"{path.relative_to(ROOT)}:{lineno}")
    return where


def test_every_named_test_path_exists() -> None:
    paths = named(NAMED_PATH)
    assert len(paths) > 10, "the search found almost nothing: is the pattern right?"
    missing = {name: places for name, places in paths.items() if not (ROOT / name).is_file()}
    assert missing == {}


def test_every_named_test_file_exists_somewhere_under_tests() -> None:
    files = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    missing = {name: places for name, places in named(NAMED_FILE).items() if name not in files}
    assert missing == {}
