"""Regressions of issue 16: what PERSIST holds never hangs, blinds or fools
anklumed, and a write PERSIST refuses is named and changes nothing.
The cases are listed, as data, in tests/persist_cases.py (REGRESSIONS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anklumectl.client import Client, ClientError
from devtools import stickimg
from devtools.slowness import scaled
from tests.service.conftest import Sim

OK_B = "STATUS=ok\nVERSION=1.1.0\nROOT_HASH=ab12\n"


@contextlib.contextmanager
def persist_rw(sim: Sim) -> Iterator[Path]:
    """PERSIST mounted read-write, as on another computer."""
    assert sim.stick is not None
    mnt = sim.workdir / "edit"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", sim.stick.persist, mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def call(sim: Sim, member: str, *args: bool) -> ClientError | None:
    """A Manager method; the error it answered, or None. A call that hangs
    fails the test in 15 s (the client's own timeout is 330 s)."""
    return asyncio.run(_call(sim, member, *args))


async def _call(sim: Sim, member: str, *args: bool) -> ClientError | None:
    client = await Client.connect(sim.bus.address, interactive=False)
    try:
        signature = "b" * len(args)
        await asyncio.wait_for(client.manager(member, signature, *args), scaled(15))
        return None
    except ClientError as e:
        return e
    finally:
        await client.close()


def mounted(path: Path) -> bool:
    return os.path.ismount(path)


def test_a_fifo_neither_hangs_nor_wedges(sim: Sim) -> None:
    with persist_rw(sim) as mnt:
        (mnt / "boot-count").unlink()
        os.mkfifo(mnt / "boot-count")
    try:
        error = call(sim, "MarkGood")
    except TimeoutError:
        pytest.fail("MarkGood hung on a FIFO boot-count")
    assert error is None, error
    assert not mounted(sim.persist_mnt)
    assert sim.persist_files()["boot-count"] == "0\n"  # replaced by a file
    # At start, a FIFO where nothing is written is a problem, and SIGTERM stops it.
    with persist_rw(sim) as mnt:
        os.mkfifo(mnt / "boot-attempts")
    sim.restart_daemon()
    assert any("boot-attempts is a named pipe" in p for p in sim.status()["Problems"])
    assert sim.stop_daemon(), "SIGTERM did not stop anklumed"


def test_an_oversized_meta_is_never_wiped(sim: Sim) -> None:
    with persist_rw(sim) as mnt:
        with (mnt / "slots" / "A.meta").open("a") as f:
            f.write("# pasted by hand\n" * 11000)
        before = (mnt / "slots" / "A.meta").read_bytes()
    sim.restart_daemon()
    s = sim.status()
    assert s["Slots"]["A"]["Status"] != "empty"
    assert any("slots/A.meta is larger than 64 KiB" in p for p in s["Problems"])
    error = call(sim, "MarkGood")
    assert error is not None and "boot is marked good" in error.message, error
    assert "slots/A.meta cannot be read" in error.message
    with sim.persist_mounted() as mnt:
        assert (mnt / "slots" / "A.meta").read_bytes() == before
        assert (mnt / "boot-count").read_text() == "0\n"
    assert sim.status()["BootState"] == "good"


def test_a_linked_meta_is_not_followed(sim: Sim) -> None:
    secret = sim.workdir / "secret.env"
    secret.write_text("ROOT_PASSWORD=hunter2\nSTATUS=ok\n")
    with persist_rw(sim) as mnt:
        (mnt / "slots" / "A.meta").unlink()
        (mnt / "slots" / "A.meta").symlink_to(secret)
    sim.restart_daemon()
    s = sim.status()
    assert any("slots/A.meta is a symbolic link" in p for p in s["Problems"])
    assert "hunter2" not in json.dumps(s)
    error = call(sim, "MarkGood")
    assert error is not None and "not stamped" in error.message
    with sim.persist_mounted() as mnt:
        assert (mnt / "slots" / "A.meta").is_symlink()
        assert not any("hunter2" in p.read_text(errors="replace")
                       for p in mnt.rglob("*") if p.is_file() and not p.is_symlink())
    assert secret.read_text() == "ROOT_PASSWORD=hunter2\nSTATUS=ok\n"


def test_a_linked_boot_count_is_replaced_not_written(sim: Sim) -> None:
    host_file = sim.workdir / "host-count"
    host_file.write_text("7\n")
    with persist_rw(sim) as mnt:
        (mnt / "boot-count").unlink()
        (mnt / "boot-count").symlink_to(host_file)
    sim.restart_daemon()
    assert any("boot-count is a symbolic link" in p for p in sim.status()["Problems"])
    assert call(sim, "MarkGood") is None
    assert host_file.read_text() == "7\n"
    with sim.persist_mounted() as mnt:
        assert not (mnt / "boot-count").is_symlink()
        assert (mnt / "boot-count").read_text() == "0\n"


def test_a_linked_slots_directory_is_refused(sim: Sim) -> None:
    elsewhere = sim.workdir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "A.meta").write_text("STATUS=ok\nVERSION=9.9.9\n")
    with persist_rw(sim) as mnt:
        for child in (mnt / "slots").iterdir():
            child.unlink()
        (mnt / "slots").rmdir()
        (mnt / "slots").symlink_to(elsewhere)
    sim.restart_daemon()
    s = sim.status()
    assert any("slots is a symbolic link" in p for p in s["Problems"])
    assert s["Slots"]["A"]["Version"] != "9.9.9"
    error = call(sim, "MarkGood")
    assert error is not None and "not stamped" in error.message
    assert sorted(p.name for p in elsewhere.iterdir()) == ["A.meta"]
    assert (elsewhere / "A.meta").read_text() == "STATUS=ok\nVERSION=9.9.9\n"
    assert sim.persist_files()["boot-count"] == "0\n"


def test_a_failed_rollback_changes_nothing(sim: Sim) -> None:
    with persist_rw(sim) as mnt:
        (mnt / "slots" / "B.meta").write_text(OK_B)
        (mnt / "ab-state").unlink()
        (mnt / "ab-state").mkdir()
    sim.restart_daemon()
    error = call(sim, "Rollback", False)
    assert error is not None and error.name.endswith("Failed"), error
    assert "ab-state is a directory" in error.message
    assert "inside anklumed" not in error.message
    s = sim.status()
    assert (s["PrimarySlot"], s["BootCount"]) == ("A", 1)
    files = sim.persist_files()
    assert files["boot-count"] == "1\n" and "last-rollback" not in files


@pytest.fixture
def read_only(sim: Sim) -> Iterator[None]:
    assert sim.stick is not None
    subprocess.run(["blockdev", "--setro", sim.stick.persist], check=True)
    try:
        yield
    finally:
        subprocess.run(["blockdev", "--setrw", sim.stick.persist], check=True)


def test_a_read_only_persist_is_named(sim: Sim, read_only: None) -> None:
    error = call(sim, "MarkGood")
    assert error is not None and "read-only" in error.message, error
    assert "inside anklumed" not in error.message
    s = sim.status()
    assert s["BootCount"] == 1 and s["PrimarySlot"] == "A"
    assert any("read-only" in p for p in s["Problems"])


def test_a_full_persist_is_named_and_changes_nothing(sim: Sim) -> None:
    with persist_rw(sim) as mnt:
        (mnt / "slots" / "B.meta").write_text(OK_B)
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'filler'}", "bs=64k"],
                       capture_output=True, check=False)  # until ENOSPC
        with contextlib.suppress(OSError):
            for n in range(100000):  # and the last inodes and directory blocks
                (mnt / f"f{n}").touch()
        subprocess.run(["sync"], check=True)
    sim.restart_daemon()
    error = call(sim, "Rollback", False)
    assert error is not None and "full" in error.message, error
    s = sim.status()
    assert (s["PrimarySlot"], s["BootCount"]) == ("A", 1)
    assert any("full" in p for p in s["Problems"])
    with sim.persist_mounted() as mnt:
        assert (mnt / "ab-state").read_text() == "A\n"
        assert (mnt / "boot-count").read_text() == "1\n"
        assert not list(mnt.glob("*.tmp"))


def wait_for(sim: Sim, check: str, seconds: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + scaled(seconds)
    while True:
        s = sim.status()
        if eval(check, {}, {"s": s}) or time.monotonic() > deadline:  # noqa: S307 - a test's own text
            return s
        time.sleep(0.2)


def test_a_stick_back_after_a_failed_update(sim: Sim, tmp_path: Path) -> None:
    from devtools.bundle_server import Faults, serving
    from tests.service.test_update import make_bundle
    manifest = make_bundle(sim, tmp_path)
    with (sim.workdir / "anklumed.toml").open("a") as f:
        f.write("download_timeout = 2.0\ndownload_attempts = 5\ndownload_backoff = 1.0\n")
    sim.stop_daemon()
    sim.start_daemon({"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    assert sim.stick is not None
    loop, image = sim.stick.loop, sim.stick.image
    # The manifest is refused three times (503), then served: the update runs
    # for a few seconds without anything of the stick open, then reads PERSIST.
    with serving(manifest.parent, Faults(fail_first=3)) as server:
        started = sim.ctl("update", f"{server.url}/{manifest.name}", "--no-wait")
        assert started.returncode == 0, started.stderr
        with stickimg.loop_names_held():  # until it is back under its name
            sim.stick.detach()
            s = wait_for(sim, "s['LastUpdate'].get('state') == 'failed'", 30)
            assert s["LastUpdate"]["state"] == "failed", s["LastUpdate"]
            # The update's read of PERSIST failed with the stick gone: nothing is known now.
            assert sim.status()["BootState"] == "degraded"
            # Back in the same port: the same name.
            assert stickimg.attach_as(loop, image, scaled(5)), f"{loop} stayed busy"
    subprocess.run(["partx", "-a", str(loop)], capture_output=True, check=False)
    sim.stick = stickimg.Stick(image=image, loop=loop)
    s = wait_for(sim, "s['BootState'] != 'degraded' and s['PrimarySlot'] == 'A'")
    assert (s["BootMediaPresent"], s["PrimarySlot"]) == (True, "A"), s
    assert s["BootState"] != "degraded" and s["Slots"]["A"]["Status"] == "ok"


def mounted_by_anklumed(sim: Sim, since: int, device: Path) -> list[str]:
    """The mounts of ``device`` anklumed made since byte ``since`` of its log.
    (Not the other stick's files: on a shared machine another test's daemon
    may take a stick plugged in, as anklumed did before this fix.)"""
    lines = sim.daemon_log.read_bytes()[since:].decode(errors="replace").splitlines()
    return [line for line in lines if "+ mount " in line and f" {device} " in line]


def test_another_stick_is_never_taken_for_the_boot_stick(sim: Sim, tmp_path: Path) -> None:
    assert sim.stick is not None
    sim.stick.detach()
    wait_for(sim, "not s['BootMediaPresent']")
    since = sim.daemon_log.stat().st_size
    other = stickimg.build(tmp_path / "other")
    try:
        s = wait_for(sim, "s['BootDisk'] == '' and 'not plugged in' in ' '.join(s['Problems'])")
        assert s["BootDisk"] != str(other.loop), s
        assert any("not plugged in" in p for p in s["Problems"]), s["Problems"]
        error = call(sim, "MarkGood")
        assert error is not None and error.name.endswith("NotFound"), error
        assert mounted_by_anklumed(sim, since, other.persist) == []
    finally:
        other.detach()


def test_another_stick_under_the_same_name_is_never_written(sim: Sim, tmp_path: Path) -> None:
    assert sim.stick is not None
    loop = sim.stick.loop
    other = stickimg.build(tmp_path / "other")  # a second anklume stick, elsewhere
    other.detach()
    with stickimg.loop_names_held():  # until the other stick has the boot stick's name
        sim.stick.detach()
        since = sim.daemon_log.stat().st_size
        # Given the boot stick's name at once, before anklumed looked again.
        assert stickimg.attach_as(loop, other.image, scaled(5)), f"{loop} stayed busy"
    subprocess.run(["partx", "-a", str(loop)], capture_output=True, check=False)
    impostor = stickimg.Stick(image=other.image, loop=loop)
    try:
        error = call(sim, "MarkGood")
        assert error is not None and error.name.endswith("NotFound"), error
        assert "boot stick" in error.message
        assert mounted_by_anklumed(sim, since, impostor.persist) == []
        s = wait_for(sim, "not s['BootMediaPresent'] and s['BootDisk'] == ''")
        assert s["BootMediaPresent"] is False and s["BootDisk"] == "", s
    finally:
        impostor.detach()
