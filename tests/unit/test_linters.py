"""The linters are part of the suite, so CI cannot skip them."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Tests and tools included: a test that mistypes what it checks passes for
# the wrong reason.
LINTED = ["anklume_client", "anklume_desktop", "anklume_image", "anklumectl", "anklumed", "bench",
          "devtools", "tests"]


def python_directories() -> list[str]:
    """The repository's top directories that hold Python (hidden ones and
    the virtualenv aside)."""
    return sorted(d.name for d in REPO.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and next(d.rglob("*.py"), None) is not None)


def test_the_linters_cover_every_python_directory() -> None:
    mypy_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    assert python_directories() == LINTED
    assert sorted(mypy_files) == LINTED


def tool(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run ./run-tests, which installs it")
    return path


def test_ruff() -> None:
    proc = subprocess.run([tool("ruff"), "check", *LINTED], cwd=REPO, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict() -> None:
    proc = subprocess.run([tool("mypy")], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
