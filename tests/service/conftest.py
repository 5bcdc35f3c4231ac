"""Service tier: the real anklumed on a private system-type bus, real loop sticks."""

import contextlib
import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.simulate import Simulation

pytestmark = pytest.mark.root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="the service tier needs root (loop devices, mount)")
        for item in items:
            if "tests/service" in str(item.fspath):
                item.add_marker(skip)


class Sim(Simulation):
    def status(self) -> dict[str, Any]:
        proc = self.ctl("status", "--json")
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def persist_files(self) -> dict[str, str]:
        """Mount PERSIST read-only and return every file's content."""
        assert self.stick is not None
        mnt = self.workdir / "inspect"
        mnt.mkdir(exist_ok=True)
        subprocess.run(["mount", "-o", "ro", self.stick.persist, mnt], check=True)
        try:
            return {str(p.relative_to(mnt)): p.read_bytes().decode(errors="replace")
                    for p in sorted(mnt.rglob("*")) if p.is_file()}
        finally:
            subprocess.run(["umount", mnt], check=True)

    @contextlib.contextmanager
    def persist_mounted(self) -> Iterator[Path]:
        assert self.stick is not None
        mnt = self.workdir / "inspect"
        mnt.mkdir(exist_ok=True)
        subprocess.run(["mount", "-o", "ro", self.stick.persist, mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=True)

    def edit_persist(self, files: dict[str, str], remove: Iterable[str] = ()) -> None:
        """Write (and remove) PERSIST files by hand, as a person with echo would."""
        assert self.stick is not None
        mnt = self.workdir / "inspect"
        mnt.mkdir(exist_ok=True)
        subprocess.run(["mount", self.stick.persist, mnt], check=True)
        try:
            for name, text in files.items():
                (mnt / name).write_text(text)
            for name in remove:
                (mnt / name).unlink()
        finally:
            subprocess.run(["umount", mnt], check=True)

    def restart_daemon(self) -> None:
        self.stop_daemon()
        self.start_daemon()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    s = Sim(tmp_path / "sim")
    try:
        s.start()
        yield s
    finally:
        s.stop()
