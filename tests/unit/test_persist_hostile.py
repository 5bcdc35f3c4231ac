"""Hostile PERSIST inodes and bytes, read and written through PersistDir on a
plain directory: nothing is followed, nothing blocks, nothing unreadable is
taken for empty, and every oddity is a problem with a sentence."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from anklumed.errors import AnklumeError
from anklumed.persist import MAX_FILE_BYTES, PersistDir, parse_kv
from anklumed.slots import model
from anklumed.slots.model import SlotStatus, parse_meta, read_slots_state
from anklumed.stick import SlotName
from anklumed.timestamps import parse_time

GOOD_META = ("STATUS=ok\nVERSION=1.0.0\nSIZE=4096\nSHA256=" + "a" * 64 + "\nROOT_HASH="
             + "b" * 64 + "\nSALT=" + "c" * 64 + "\n")


def persist(tmp_path: Path) -> Path:
    root = tmp_path / "persist"
    (root / "slots").mkdir(parents=True)
    (root / "ab-state").write_text("A\n")
    (root / "boot-count").write_text("1\n")
    (root / "slots" / "A.meta").write_text(GOOD_META)
    return root


def read_within(seconds: float, root: Path) -> model.SlotsState:
    """read_slots_state in a thread: a read that blocks fails the test, not the run."""
    result: list[model.SlotsState] = []
    thread = threading.Thread(target=lambda: result.append(read_slots_state(PersistDir(root))),
                              daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in root.rglob("*"):  # release the reader: a writer opens the FIFO
            if fifo.is_fifo():
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"reading PERSIST blocked for {seconds} s")
    return result[0]


def test_a_fifo_is_reported_without_blocking(tmp_path: Path) -> None:
    root = persist(tmp_path)
    (root / "boot-count").unlink()
    os.mkfifo(root / "boot-count")
    state = read_within(5, root)
    assert state.boot_count == 0
    assert any("boot-count" in p and "named pipe" in p for p in state.problems)


def test_an_oversized_meta_is_unreadable_not_empty(tmp_path: Path) -> None:
    root = persist(tmp_path)
    with (root / "slots" / "A.meta").open("a") as f:
        f.write("# a comment a person pasted\n" * 11000)
    state = read_slots_state(PersistDir(root))
    assert state.meta[SlotName.A].status is not SlotStatus.EMPTY
    assert "slots/A.meta" in state.unreadable
    assert any("slots/A.meta" in p and "larger than" in p for p in state.problems)


def test_a_symlinked_meta_is_not_followed(tmp_path: Path) -> None:
    root = persist(tmp_path)
    secret = tmp_path / "secret.env"
    secret.write_text("PASSWORD=hunter2\nSTATUS=ok\n")
    (root / "slots" / "A.meta").unlink()
    (root / "slots" / "A.meta").symlink_to(secret)
    state = read_slots_state(PersistDir(root))
    assert "slots/A.meta" in state.unreadable
    assert state.meta[SlotName.A].extra == {}
    assert any("symbolic link" in p for p in state.problems)
    assert not any("hunter2" in p for p in state.problems)


def test_a_write_replaces_a_symlink_and_never_writes_through_it(tmp_path: Path) -> None:
    root = persist(tmp_path)
    outside = tmp_path / "host-file"
    outside.write_text("host\n")
    (root / "boot-count").unlink()
    (root / "boot-count").symlink_to(outside)
    (root / "boot-count.tmp").symlink_to(outside)  # a planted temporary, too
    model.write_boot_count(PersistDir(root), 0)
    assert outside.read_text() == "host\n"
    assert not (root / "boot-count").is_symlink()
    assert (root / "boot-count").read_text() == "0\n"


def test_a_symlinked_slots_directory_is_refused(tmp_path: Path) -> None:
    root = persist(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (root / "slots").rename(elsewhere)
    (root / "slots").symlink_to(elsewhere)
    state = read_slots_state(PersistDir(root))
    assert "slots/A.meta" in state.unreadable
    assert any("slots" in p and "symbolic link" in p for p in state.problems)
    with pytest.raises(AnklumeError, match="symbolic link"):
        model.write_meta(PersistDir(root), SlotName.B, model.SlotMeta())
    assert sorted(p.name for p in elsewhere.iterdir()) == ["A.meta"]


def test_every_inode_type_is_named(tmp_path: Path) -> None:
    root = persist(tmp_path)
    (root / "ab-state").unlink()
    (root / "ab-state").mkdir()
    (root / "boot-attempts").symlink_to("ab-state")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "last-rollback"))
    if os.geteuid() == 0:
        os.mknod(root / "slots" / "B.meta", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    try:
        state = read_within(5, root)
    finally:
        listener.close()
    text = "\n".join(state.problems)
    assert "ab-state is a directory" in text
    assert "boot-attempts is a symbolic link" in text
    assert "last-rollback is a socket" in text
    if os.geteuid() == 0:
        assert "slots/B.meta is a device node" in text
    assert state.primary is SlotName.A and state.boot_attempts == 3


def test_a_directory_in_place_of_a_file_is_named_before_anything_is_written(
        tmp_path: Path) -> None:
    root = persist(tmp_path)
    (root / "ab-state").unlink()
    (root / "ab-state").mkdir()
    with pytest.raises(AnklumeError, match="ab-state is a directory"):
        model.write_primary(PersistDir(root), SlotName.B, 0)
    assert (root / "boot-count").read_text() == "1\n"  # the count was not reset either
    assert not list(root.rglob("*.tmp"))


def test_nul_and_invalid_utf8_are_problems(tmp_path: Path) -> None:
    root = persist(tmp_path)
    (root / "slots" / "A.meta").write_bytes(GOOD_META.encode() + b"X_NOTE=caf\xe9\x00\n")
    (root / "last-rollback").write_bytes(b"FROM=A\nTO=B\nREASON=boot\x00count\n")
    state = read_slots_state(PersistDir(root))
    text = "\n".join(state.problems)
    assert "slots/A.meta" in text and "last-rollback" in text
    assert "NUL" in text
    assert state.meta[SlotName.A].status is SlotStatus.OK  # the rest is still read


@pytest.mark.parametrize("text", ["9" * 30, "99999999999999999999", "0001-01-01T00:00:00+14:00",
                                  "9999-12-31T23:59:59-14:00", "\u0661\u0662", "\u00b2"])
def test_times_out_of_range_are_invalid_not_fatal(text: str) -> None:
    assert parse_time(text) is None
    meta, problems = parse_meta(f"STATUS=ok\nLAST_GOOD_AT={text}\n", SlotName.A)
    assert meta.last_good_at is None and problems
    rollback, _ = model.parse_rollback(f"FROM=A\nTO=B\nAT={text}\n")
    assert rollback is not None and rollback.at is None


@pytest.mark.parametrize(("key", "value"), [("SIZE", str(1 << 64)),
                                            ("DATA_BLOCK_SIZE", str(1 << 40)),
                                            ("HASH_BLOCK_SIZE", str(1 << 33))])
def test_numbers_fit_what_the_bus_publishes(key: str, value: str) -> None:
    meta, problems = parse_meta(f"STATUS=ok\n{key}={value}\n", SlotName.A)
    assert getattr(meta, key.lower()) is None and problems


def test_line_problems_are_capped() -> None:
    _values, problems = parse_kv("junk\n" * 5000)
    assert len(problems) <= 6
    assert "4995 more" in problems[-1]


def test_a_huge_file_is_not_read_whole(tmp_path: Path) -> None:
    root = persist(tmp_path)
    with (root / "boot-count").open("wb") as f:
        f.truncate(1 << 33)  # sparse: 8 GiB that cost nothing on disk
    state = read_slots_state(PersistDir(root))
    assert state.boot_count == 0
    assert any("boot-count" in p and str(MAX_FILE_BYTES // 1024) in p for p in state.problems)
