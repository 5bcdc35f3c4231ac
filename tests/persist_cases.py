"""The hostile PERSIST cases the tests run, as data.

``FUZZ_CASES`` are run by tests/service/test_persist_fuzz.py, ``REGRESSIONS``
by tests/service/test_persist_hostile.py; docs/hostile-inputs.md lists every
id of both, and tests/unit/test_hostile_catalogue.py checks it does.
"""

from __future__ import annotations

import os
import random
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SECRET = "ANKLUME_TEST_SECRET=do-not-copy-me"
VALID = {
    "ab-state": b"A\n",
    "boot-count": b"1\n",
    "boot-attempts": b"3\n",
    "last-rollback": b"FROM=B\nTO=A\nAT=2026-11-01T10:00:00Z\nREASON=boot-count\n",
    "pool.conf": (b"FORMAT=1\nPOOL_NAME=tank\nPOOL_TYPE=btrfs\nENCRYPTION=luks2\n"
                  b"LUKS_UUID=0b8f5a4e-1111-4222-8333-944455556666\n"),
}
META_FILES = ("slots/A.meta", "slots/B.meta")
VERITY_FILES = ("slots/A.verity", "slots/B.verity")
TEXT_FILES = ("ab-state", "boot-count", "boot-attempts", *META_FILES, "last-rollback",
              "pool.conf")
TMP_FILES = ("ab-state.tmp", "slots/A.meta.tmp")


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    input: str  # for the catalogue
    answer: str  # for the catalogue
    odd: bool  # a problem naming the file must be reported
    make: Callable[[Path, Path, bytes, random.Random], None]  # (persist, outside, valid, rng)


def _write(data: Callable[[bytes, random.Random], bytes]) -> Callable[
        [Path, Path, bytes, random.Random], None]:
    def make(path: Path, _outside: Path, valid: bytes, rng: random.Random) -> None:
        path.write_bytes(data(valid, rng))
    return make


def _fifo(path: Path, _o: Path, _v: bytes, _r: random.Random) -> None:
    os.mkfifo(path)


def _dir(path: Path, _o: Path, _v: bytes, _r: random.Random) -> None:
    path.mkdir()
    (path / "inside").write_text("x\n")


def _device(path: Path, _o: Path, _v: bytes, _r: random.Random) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers


def _socket(path: Path, _o: Path, _v: bytes, _r: random.Random) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))  # the node stays after close: nobody listens on it
    s.close()


def _link_out(path: Path, outside: Path, _v: bytes, _r: random.Random) -> None:
    path.symlink_to(outside)


def _link_in(path: Path, _o: Path, _v: bytes, _r: random.Random) -> None:
    if path.parent.name != "slots":
        path.symlink_to("slots/A.meta")
    else:
        path.symlink_to("B.meta" if path.name == "A.meta" else "A.meta")


def _random(_v: bytes, rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(16, 400)))


def _nul(v: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(v))
    return v[:at] + b"\0" + v[at:]


CONTENTS: dict[str, tuple[str, Callable[[bytes, random.Random], bytes], str]] = {
    "random": ("16-400 random bytes (seeded)", _random, "problem; default used"),
    "nul": ("the valid content with a NUL byte inserted", _nul,
            "problem (NUL read as U+FFFD); the rest read"),
    "invalid-utf8": ("the valid content then bytes FF FE", lambda v, _r: v + b"\xff\xfe\n",
                     "problem (not UTF-8); the rest read"),
    "huge": ("the valid content then 100 KiB of comment lines",
             lambda v, _r: v + b"# padding\n" * 10240,
             "problem (larger than 64 KiB); unreadable, never rewritten"),
    "empty": ("an empty file", lambda _v, _r: b"", "problem; default used"),
    "crlf": ("the valid content with CRLF line ends", lambda v, _r: v.replace(b"\n", b"\r\n"),
             "read as if LF; no problem"),
}
INODES: dict[str, tuple[str, Callable[[Path, Path, bytes, random.Random], None]]] = {
    "fifo": ("a named pipe (mkfifo)", _fifo),
    "symlink-in": ("a symbolic link to another PERSIST file", _link_in),
    "symlink-out": ("a symbolic link to a host file outside PERSIST", _link_out),
    "dir": ("a directory (not empty)", _dir),
    "device": ("a character device node (1,3)", _device),
    "socket": ("a unix socket", _socket),
}
INODE_ANSWERS = {
    "dir": "problem (is a directory); a write to it is refused by name and changes nothing",
    "symlink-out": "problem (a symbolic link); the host file is never read nor written; a "
                   "write replaces the link itself by rename",
}
INODE_ANSWER = "problem naming its kind; never opened; a write replaces it by rename"
DEFAULTS = {"ab-state": "slot A", "boot-count": "0", "boot-attempts": "3",
            "last-rollback": "none"}


def _content_answer(file: str, kind: str, answer: str) -> str:
    """What a damaged text file gets, in the words of the file's owner."""
    if kind in ("crlf", "huge") or file.endswith(".verity"):
        return answer
    if file == "pool.conf":
        return "problem (pool.conf is damaged); the data disk is left as it is (state error)"
    if file in META_FILES:
        return {"random": "problem; no valid STATUS: slot treated as failed; every key kept "
                          "when MarkGood rewrites it",
                "empty": "problem; slot treated as empty"}.get(
            kind, answer + "; every valid field kept when MarkGood rewrites it")
    if kind in ("random", "empty"):
        return f"problem; the initramfs's default ({DEFAULTS[file]}) used"
    return answer


def _valid(file: str, verity: bytes, meta: dict[str, bytes]) -> bytes:
    if file in VALID:
        return VALID[file]
    return verity if file.endswith(".verity") else meta[file]


def fuzz_cases() -> list[Case]:
    cases = []
    for file in (*TEXT_FILES, *VERITY_FILES):
        for kind, (text, data, answer) in CONTENTS.items():
            if file.endswith(".verity") and kind == "crlf":
                continue  # a binary tree has no lines
            odd = kind != "crlf" and not (
                file.endswith(".verity") and kind in ("huge", "nul", "invalid-utf8"))
            if file.endswith(".verity"):
                answer = ("problem (not a dm-verity tree: the slot fails at boot)" if odd
                          else "accepted: a tree is binary and large; only its superblock is "
                               "read here, veritysetup checks the rest at boot")
            cases.append(Case(f"{file}/{kind}", file, text,
                              _content_answer(file, kind, answer), odd, _write(data)))
        for kind, (text, make) in INODES.items():
            cases.append(Case(f"{file}/{kind}", file, text,
                              INODE_ANSWERS.get(kind, INODE_ANSWER), True, make))
    for file in TMP_FILES:
        for kind in ("dir", "symlink-out", "fifo"):
            text, make = INODES[kind]
            answer = ("problem; left in place, named when a write needs it" if kind == "dir"
                      else "removed at start (the link itself, never its target)")
            cases.append(Case(f"{file}/{kind}", file, text, answer, kind == "dir", make))
    for kind in ("symlink-out", "fifo", "dir-empty"):
        text = {"symlink-out": "slots/ replaced by a symbolic link to a host directory",
                "fifo": "slots/ replaced by a named pipe",
                "dir-empty": "slots/ empty (no meta, no tree)"}[kind]
        answer = ("the slots read as empty, no problem" if kind == "dir-empty" else
                  "problem; metas unreadable, never written through")
        cases.append(Case(f"slots/{kind}", "slots", text, answer, kind != "dir-empty",
                          _slots_dir(kind)))
    return cases


def _slots_dir(kind: str) -> Callable[[Path, Path, bytes, random.Random], None]:
    def make(path: Path, outside: Path, _v: bytes, _r: random.Random) -> None:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
        if kind == "symlink-out":
            path.symlink_to(outside.parent / "outside-slots")
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            path.mkdir()
    return make


def valid_content(case: Case, verity: bytes, meta: dict[str, bytes]) -> bytes:
    return _valid(case.file, verity, meta) if case.file not in ("slots", *TMP_FILES) else b""


FUZZ_CASES = fuzz_cases()


@dataclass(frozen=True)
class Regression:
    id: str
    test: str  # the test function in tests/service/test_persist_hostile.py
    input: str
    answer: str


REGRESSIONS = (
    Regression("regress/fifo-boot-count", "test_a_fifo_neither_hangs_nor_wedges",
               "mkfifo boot-count while anklumed runs, then MarkGood, then SIGTERM",
               "MarkGood replaces the FIFO with 0 by rename; PERSIST unmounted; SIGTERM stops "
               "the daemon; a FIFO boot-attempts at start is a problem"),
    Regression("regress/huge-meta", "test_an_oversized_meta_is_never_wiped",
               "a valid slots/A.meta with 11,000 comment lines appended, then MarkGood",
               "problem (larger than 64 KiB), slot shown failed not empty; MarkGood resets "
               "boot-count and refuses by name to restamp the meta, which stays byte for byte"),
    Regression("regress/symlink-meta-secret", "test_a_linked_meta_is_not_followed",
               "ln -sf /host/secret.env slots/A.meta, then MarkGood",
               "problem (a symbolic link); the secret reaches neither PERSIST nor the bus"),
    Regression("regress/symlink-boot-count", "test_a_linked_boot_count_is_replaced_not_written",
               "boot-count a symbolic link to a host file, then MarkGood",
               "the link is replaced by a file holding 0; the host file is unchanged"),
    Regression("regress/symlink-slots", "test_a_linked_slots_directory_is_refused",
               "slots/ a symbolic link to a host directory, then MarkGood",
               "problem; boot-count reset, nothing written into the host directory; "
               "MarkGood says the meta was not stamped"),
    Regression("regress/dir-ab-state-rollback", "test_a_failed_rollback_changes_nothing",
               "ab-state a directory, slot B ok, then Rollback",
               "refused by name (is a directory): boot-count untouched, status re-read"),
    Regression("regress/read-only", "test_a_read_only_persist_is_named",
               "blockdev --setro on the PERSIST partition, then MarkGood",
               "refused by name (read-only), nothing changed; status problem says read-only"),
    Regression("regress/full", "test_a_full_persist_is_named_and_changes_nothing",
               "PERSIST filled to the last block, slot B ok, then Rollback",
               "refused by name (full) before any rename: ab-state and boot-count unchanged"),
    Regression("regress/other-stick", "test_another_stick_is_never_taken_for_the_boot_stick",
               "the boot stick pulled and another anklume stick plugged in",
               "not taken (its PERSIST PARTUUID is not the hand-off's): problem 'not plugged "
               "in', MarkGood NotFound, the other stick untouched"),
    Regression("regress/name-reused", "test_another_stick_under_the_same_name_is_never_written",
               "the boot stick pulled and another anklume stick given its device name "
               "at once, then MarkGood",
               "refused (NotFound: not on the boot stick any more, by the disk's sequence "
               "number); the other stick untouched; media shown absent"),
    Regression("regress/replug-after-failed-update", "test_a_stick_back_after_a_failed_update",
               "the stick pulled while an update fetches its manifest, the update fails "
               "(no stick), the stick plugged back under the same name",
               "PERSIST read again by itself: primary slot and boot state back, no call needed"),
)


def all_ids() -> list[str]:
    return [c.id for c in FUZZ_CASES] + [r.id for r in REGRESSIONS]
