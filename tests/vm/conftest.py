"""Fixtures for tests that run inside the plain test guest (real kernel)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import stickimg
from tests.service.conftest import sim  # noqa: F401 (the simulation, as a fixture here too)


@pytest.fixture
def stick(tmp_path: Path) -> Iterator[stickimg.Stick]:
    """A populated boot stick on a loop device of the guest."""
    built = stickimg.build(tmp_path / "stick")
    yield built
    built.detach()


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[Path]:
    """A blank 256 MiB disk on a loop device (sparse file in the guest's tmpfs)."""
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(256 * 1024 * 1024)
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                          capture_output=True, text=True).stdout.strip()
    yield Path(loop)
    subprocess.run(["losetup", "-d", loop], check=False)
