"""PERSIST fuzzer: every file anklume reads or writes, given random and
adversarial bytes and every inode type (tests/persist_cases.py). After each
case anklumed starts, answers, marks the boot good and rolls back, and for
the files an update writes, installs an update; then it must still be up and
answering, have lost no field of a readable meta, have left only valid files
behind, never have touched what a link points to, and have reported every
oddity in Problems. Seeded (ANKLUME_FUZZ_SEED); one stick, rewritten per case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anklumectl.client import Client, ClientError
from anklumed.persist import MAX_FILE_BYTES, decode
from anklumed.slots.model import VERITY_MAGIC, parse_meta, parse_rollback
from anklumed.stick import SlotName
from devtools.slowness import scaled
from tests.persist_cases import FUZZ_CASES, INODES, META_FILES, SECRET, VALID, Case
from tests.service.conftest import Sim
from tests.service.test_persist_hostile import persist_rw
from tests.service.test_update import make_bundle

SEED = int(os.environ.get("ANKLUME_FUZZ_SEED", "16"))
ONLY = re.compile(os.environ.get("ANKLUME_FUZZ_CASES", ""))  # to rerun some cases by id
UPDATE_FILES = {"ab-state", "boot-count", "slots/B.meta", "slots/B.verity", "slots"}
UPDATE_KINDS = {*INODES, "huge", "random"}
# Files no call writes but Rollback (last-rollback): damage there cannot hide
# damage to another of them.
PASSIVE_FILES = {"boot-attempts", "last-rollback", "pool.conf", "slots/A.verity"}
STAMPED = {"STATUS", "LAST_GOOD_AT"}  # what MarkGood changes in the booted slot's meta
KV_LINE = re.compile(r"[A-Z0-9_]+=[^\n]*")


@dataclass(frozen=True)
class Inode:
    kind: int  # stat.S_IFMT
    ino: int
    data: bytes | None  # a regular file's content, if small


def inventory(root: Path) -> dict[str, Inode]:
    """Every entry below ``root``, links not followed."""
    found = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            st = path.lstat()
            small = stat.S_ISREG(st.st_mode) and st.st_size <= 2 * MAX_FILE_BYTES
            found[str(path.relative_to(root))] = Inode(
                stat.S_IFMT(st.st_mode), st.st_ino, path.read_bytes() if small else None)
        dirs[:] = [d for d in dirs if d != "lost+found"]
    return found


def readable_fields(inode: Inode | None, slot: SlotName) -> dict[str, str] | None:
    """The fields of a meta anklumed can read (None if it cannot)."""
    if inode is None or inode.kind != stat.S_IFREG or inode.data is None or \
            len(inode.data) > MAX_FILE_BYTES:
        return None
    return parse_meta(decode("meta", inode.data)[0], slot)[0].to_kv()


def valid_file(name: str, data: bytes) -> bool:
    """Content anklumed may leave in a file it wrote (busybox reads these)."""
    if name.endswith(".verity"):
        return data.startswith(VERITY_MAGIC)
    text = data.decode()  # UTF-8 or a failure
    if name == "ab-state":
        return text in ("A\n", "B\n")
    if name == "boot-count":
        return text.rstrip("\n").isdigit()
    if name == "last-rollback":
        return parse_rollback(text)[1] == [] and parse_rollback(text)[0] is not None
    if name.endswith(".meta"):
        lines = text.splitlines()
        return all(KV_LINE.fullmatch(line) for line in lines) and \
            any(re.fullmatch(r"STATUS=(ok|pending|failed|empty)", line) for line in lines)
    return True


class Fuzz:
    def __init__(self, sim: Sim, manifest: Path, secret: Path) -> None:
        self.sim, self.manifest, self.secret = sim, manifest, secret
        self.loop = asyncio.new_event_loop()
        self.client: Client | None = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, scaled(30)))

    def connect(self) -> Client:
        if self.client is None:
            self.client = self.run(Client.connect(self.sim.bus.address, interactive=False))
        assert self.client is not None
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.run(self.client.close())
        self.loop.close()

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.run(self.connect().status())
        return result

    def method(self, member: str, signature: str = "", *args: Any) -> list[Any] | ClientError:
        try:
            result: list[Any] = self.run(self.connect().manager(member, signature, *args))
            return result
        except ClientError as e:
            assert "inside anklumed" not in e.message and e.name != "Timeout", \
                f"{member}: unnamed error {e.name}: {e.message}"
            return e

    def update(self) -> None:
        """Install the bundle: it succeeds, or fails with a named error."""
        reply = self.method("Update", "ssb", str(self.manifest), "", False)
        if isinstance(reply, ClientError):
            return
        path = reply[0]
        deadline = time.monotonic() + scaled(30)
        while time.monotonic() < deadline:
            props = self.run(self.connect().call(
                path, "org.freedesktop.DBus.Properties", "GetAll", "s",
                ["org.anklume.Live1.Job"]))[0]
            if props["State"] != "running":
                assert "internal error" not in props["Message"], props["Message"]
                return
            time.sleep(0.02)
        raise AssertionError("the update did not end in 30 s")


def prepare_baseline(sim: Sim) -> dict[str, bytes]:
    """The simulated stick with slot B ok too (a copy of A), so that rollback
    and every meta check have something to work on."""
    with persist_rw(sim) as mnt:
        slots = mnt / "slots"
        (slots / "B.meta").write_bytes((slots / "A.meta").read_bytes().replace(
            b"VERSION=1.0.0", b"VERSION=0.9.0") + b"X_VENDOR=kept\n")
        shutil.copyfile(slots / "A.verity", slots / "B.verity")
        return {k: v.data for k, v in inventory(mnt).items() if v.data is not None}


def reset(mnt: Path, baseline: dict[str, bytes]) -> None:
    for entry in mnt.iterdir():
        if entry.name == "lost+found":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (mnt / "slots").mkdir()
    for name, data in baseline.items():
        (mnt / name).write_bytes(data)


def apply(case: Case, mnt: Path, baseline: dict[str, bytes], secret: Path,
          rng: random.Random) -> None:
    target = mnt / case.file
    if case.file != "slots" and case.id.rsplit("/", 1)[1] in INODES and target.exists():
        target.unlink()
    case.make(target, secret, baseline.get(case.file, VALID.get(case.file, b"")), rng)


@contextlib.contextmanager
def persist_ro(sim: Sim) -> Iterator[Path]:
    """PERSIST mounted read-only, once anklumed's own transaction (a refresh
    it started by itself) has let go of it."""
    for _ in range(100):
        try:
            with sim.persist_mounted() as mnt:
                yield mnt
                return
        except subprocess.CalledProcessError:
            time.sleep(0.05)
    raise AssertionError("PERSIST stayed mounted by anklumed for 5 s")


def kind(case: Case) -> str:
    return case.id.rsplit("/", 1)[1]


def batches(cases: list[Case]) -> list[list[Case]]:
    """Cases that run on one daemon start: the same kind of damage to files
    whose damage cannot hide another's (each is still checked on its own).
    A start is most of a case's cost: this halves the run."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        if case.file in PASSIVE_FILES:
            key = f"passive/{kind(case)}"
        elif case.file in META_FILES:
            key = f"meta/{kind(case)}"
        else:
            key = case.id
        groups.setdefault(key, []).append(case)
    return list(groups.values())


def check_batch(fuzz: Fuzz, mnt: Path, batch: list[Case], baseline: dict[str, bytes],
                rng: random.Random) -> None:
    """One daemon start on PERSIST, which stays mounted at ``mnt`` all along
    (anklumed mounts the same filesystem at its own mountpoint meanwhile, as
    Linux allows): three mounts fewer per start."""
    sim = fuzz.sim
    assert sim.stop_daemon(), "SIGTERM did not stop anklumed"
    reset(mnt, baseline)
    for case in batch:
        apply(case, mnt, baseline, fuzz.secret, rng)
    before = inventory(mnt)
    secret_before = fuzz.secret.read_bytes()
    sim.start_daemon()
    s = fuzz.status()
    for case in batch:
        if case.odd:
            assert any(case.file in p for p in s["Problems"]), \
                f"{case.id} not reported: {s['Problems']}"
    fuzz.method("MarkGood")
    fuzz.method("Rollback", "b", False)
    # An update for the files it writes, given what it cannot read or write
    # (the other contents are read the same way by every call). B's meta is
    # then the new system's, or failed.
    updated = any(c.file in UPDATE_FILES and kind(c) in UPDATE_KINDS for c in batch)
    if updated:
        fuzz.update()
    s = fuzz.status()  # still up and answering
    assert SECRET not in json.dumps(s)
    assert fuzz.secret.read_bytes() == secret_before
    after = inventory(mnt)
    for slot, name in zip(SlotName, META_FILES, strict=True):
        was = readable_fields(before.get(name), slot)
        if was is None:  # unreadable: never rewritten, except by an update of its slot
            assert before.get(name) is None or after.get(name) == before.get(name) or (
                updated and slot is SlotName.B), f"{name} was unreadable and was changed"
        elif not (updated and slot is SlotName.B):
            now = readable_fields(after.get(name), slot) or {}
            lost = {k: v for k, v in was.items() if k not in STAMPED and now.get(k) != v}
            assert not lost, f"{name} lost {lost}"
    for name, inode in after.items():
        assert not name.endswith(".tmp") or before.get(name) == inode, f"{name} left behind"
        if inode.data is not None:
            assert SECRET.encode() not in inode.data, f"the secret reached {name}"
        if before.get(name) != inode and inode.kind != stat.S_IFDIR:  # written by anklumed
            assert inode.kind == stat.S_IFREG, f"{name} written as {inode.kind:o}"
            assert inode.data is None or valid_file(name, inode.data), \
                f"{name} written invalid: {inode.data[:200]!r}"
    assert sim.daemon is not None and sim.daemon.poll() is None, "anklumed exited"


def test_persist_fuzz(sim: Sim, tmp_path: Path) -> None:
    manifest = make_bundle(sim, tmp_path)
    sim.stop_daemon()
    baseline = prepare_baseline(sim)
    outside = sim.workdir / "outside"
    (outside / "outside-slots").mkdir(parents=True)
    secret = outside / "secret.env"
    secret.write_text(f"{SECRET}\nSTATUS=ok\n")
    (outside / "outside-slots" / "A.meta").write_text(f"STATUS=ok\n{SECRET}\n")
    rng = random.Random(SEED)
    fuzz = Fuzz(sim, manifest, secret)
    failures = []
    try:
        with persist_rw(sim) as mnt:
            for batch in batches([c for c in FUZZ_CASES if ONLY.search(c.id)]):
                try:
                    check_batch(fuzz, mnt, batch, baseline, rng)
                except (AssertionError, RuntimeError, ClientError, TimeoutError,
                        ValueError) as e:
                    failures.append(f"{' + '.join(c.id for c in batch)}: "
                                    f"{type(e).__name__}: {e}")
                    if fuzz.client is not None:  # the next batch on a fresh connection
                        fuzz.run(fuzz.client.close())
                        fuzz.client = None
            sim.stop_daemon()  # before PERSIST is unmounted here
    finally:
        fuzz.close()
    report = f"seed {SEED}, {len(failures)} batches of cases failed:\n"
    assert not failures, report + "\n".join(failures)
