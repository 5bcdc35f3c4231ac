"""A seeded, bounded fuzzer of anklumed's D-Bus API (tests and bench, not installed).

  python -m devtools.dbus_fuzz --bus ADDRESS [--seed N] [--rounds N] [--user nobody]

Every method of every org.anklume.* interface the daemon exports (found by
introspecting it from its root, so a new method is fuzzed without a change
here, plus those of dbus/org.anklume.Live1.xml) is called with each class of
argument in ``CASES``, then with random ones; the standard Properties and
Introspectable interfaces too. Prints one JSON report: the case classes run,
the calls made, and every *violation*: an error reply that is not a named
org.anklume.Live1.Error.* or a standard org.freedesktop.DBus.Error.*, a
message that shows a traceback, a call left unanswered, or status not
answering between calls.

Safety: no string argument may name anything on this machine, whoever
calls (root skips polkit; another user may be allowed by it). ``safe_text``
rewrites a value that, read as a path (or as a disk name under /dev, as
``data.disks.choose`` reads it), exists: so Setup and Adopt are always
refused before any disk is opened or written (NotFound, after a read-only
probe), and Update never reads a real file. Rollback, SetPrimary, MarkBad and
MarkGood do change the simulated stick's PERSIST: run it on a simulation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import random
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.signature import SignatureTree

from anklume_client import dbus_fixes  # noqa: F401 - the writer fix, for huge calls

DEST = "org.anklume.Live1"
ROOT = "/org/anklume/Live1"
XML = Path(__file__).resolve().parent.parent / "dbus" / "org.anklume.Live1.xml"
NAMED_ERRORS = {f"org.anklume.Live1.Error.{n}" for n in (
    "Failed", "NotAuthorized", "Busy", "InvalidArgument", "NotFound", "VerificationFailed",
    "IncorrectPassphrase", "RefusedBootDevice", "Cancelled")}
STATUS: dict[str, Any] = dict(
    destination=DEST, path=ROOT, interface="org.freedesktop.DBus.Properties",
    member="GetAll", signature="s", body=["org.anklume.Live1.Manager"])
CALL_TIMEOUT = 30.0
HUGE = 1 << 20  # 1 MiB: far over every limit of the daemon, well under the bus's

# Each case class: id -> what it sends (docs/hostile-inputs.md lists the same
# ids; tests/service/test_dbus_fuzz.py checks both lists are equal).
CASES = {
    "empty": "every argument empty: '', b'', false, 0, []",
    "boundary-strings": "slot-like, path-like, control characters, escape sequences, "
                        "bidi overrides, emoji",
    "huge-string": "a 1 MiB string in every s argument",
    "huge-bytes": "a 1 MiB ay (passphrases are at most 4096 bytes) and 4097 bytes",
    "nul-bytes": "NUL bytes inside every ay (a passphrase may hold them)",
    "huge-array": "100,000 items in every array argument",
    "integer-limits": "0, -1 and the largest value of every integer type",
    "wrong-types": "the right number of arguments, each of another type",
    "wrong-count": "one argument fewer, one more, none",
    "unknown-object": "each method on a path where nothing is exported (job/999999, slot/C)",
    "properties": "Get/GetAll/Set of unknown interfaces and properties; Set of read-only ones",
    "nul-in-string": "a NUL inside an s argument (invalid on the wire)",
    "invalid-object-path": "a call whose path is not a valid object path (invalid on the wire)",
    "passed-files": "every h argument: /dev/null, a deleted junk file, a directory, "
                    "a pipe whose writer is closed",
    "random": "seeded random values of the right signature",
}


@dataclass
class Method:
    path: str
    interface: str
    name: str
    args: list[tuple[str, str]]  # (name, signature)

    @property
    def signature(self) -> str:
        return "".join(sig for _, sig in self.args)


@dataclass
class Report:
    cases: set[str] = field(default_factory=set)
    calls: int = 0
    replies: dict[str, int] = field(default_factory=dict)
    by_case: dict[str, dict[str, int]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)

    def as_json(self) -> str:
        return json.dumps({"cases": sorted(self.cases), "calls": self.calls,
                           "replies": self.replies, "by_case": self.by_case,
                           "violations": self.violations[:50],
                           "violation_count": len(self.violations),
                           "methods": self.methods})


# ---- what exists ----------------------------------------------------------------
async def introspect(bus: MessageBus, path: str = "/") -> list[Method]:
    """Every org.anklume.* method of every object under ``path``."""
    reply = await call(bus, Message(destination=DEST, path=path, member="Introspect",
                                    interface="org.freedesktop.DBus.Introspectable"))
    if reply is None or reply.message_type != MessageType.METHOD_RETURN:
        return []
    node = ET.fromstring(reply.body[0])  # noqa: S314 - the daemon under test
    found = _methods(node, path)
    for child in node.findall("node"):
        name = child.get("name", "")
        found += await introspect(bus, f"{path.rstrip('/')}/{name}")
    return found


def _methods(node: ET.Element, path: str) -> list[Method]:
    found = []
    for iface in node.findall("interface"):
        if not iface.get("name", "").startswith("org.anklume."):
            continue
        for m in iface.findall("method"):
            args = [(a.get("name", ""), a.get("type", "")) for a in m.findall("arg")
                    if a.get("direction", "in") == "in"]
            found.append(Method(path, iface.get("name", ""), m.get("name", ""), args))
    return found


def from_xml(paths: dict[str, str]) -> list[Method]:
    """The methods the interface file declares, on the path of each interface."""
    root = ET.parse(XML).getroot()  # noqa: S314 - our own file
    found = []
    for iface in root.findall("interface"):
        name = iface.get("name", "")
        if name not in paths:
            continue
        wrapper = ET.Element("node")
        wrapper.append(iface)
        found += _methods(wrapper, paths[name])
    return found


# ---- values ------------------------------------------------------------------------
INT_LIMITS = {"y": (0, 255), "n": (-(1 << 15), (1 << 15) - 1), "q": (0, (1 << 16) - 1),
              "i": (-(1 << 31), (1 << 31) - 1), "u": (0, (1 << 32) - 1),
              "x": (-(1 << 63), (1 << 63) - 1), "t": (0, (1 << 64) - 1)}
BOUNDARY_STRINGS = ["A", "B", "b ", " a", "C", "AB", "/", ".", "..", "../../etc/shadow",
                    "\n", "\t", "\x1b[2J\x1b[31mred", "\u202egnp.exe", "é😀",
                    "'; rm -rf / #", "$(reboot)", "%s%s%n", "zfs", "btrfs", "luks2", "none",
                    "http://127.0.0.1:1/x.manifest", "file:///etc/passwd"]


def names_something(value: str) -> bool:
    """``value`` read as a path, as a name under /dev, or by its last part
    (``data.disks.choose`` keeps only the name of the path it resolves:
    ``/anything/sdb`` is ``sdb``) reaches a file or a block device here."""
    if "\x00" in value or not value:  # "" names nothing: choose() reads it as "dev"
        return False
    try:
        real = os.path.realpath(value if value.startswith("/") else f"/dev/{value}")
        names = {value, real, f"/dev/{value}", f"/sys/class/block/{Path(real).name}",
                 f"/dev/{Path(value).name}"}
        return any(os.path.lexists(n) for n in names if n and Path(n).name)
    except (OSError, ValueError):
        return True


def safe_text(value: str) -> str:
    """``value``, unless it names something on this machine (see the module
    doc): then its last part is renamed (a valid object path stays one)."""
    for _ in range(5):
        if not names_something(value):
            return value
        stem = value.rstrip("/")
        value = f"{stem}_fuzz_absent" if stem else "/fuzz_absent"
    return "fuzz-absent"


def _make_safe(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, list):
        return [_make_safe(v) for v in value]
    return value


def simple(sig: str, rng: random.Random, case: str) -> Any:
    """A value of the complete type ``sig`` for ``case``."""
    code = sig[0]
    if code == "s":
        if case == "empty":
            return ""
        if case == "huge-string":
            return "A" * HUGE
        if case == "boundary-strings":
            return rng.choice(BOUNDARY_STRINGS)
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(160, 0x2FFF)]))
                       for _ in range(rng.randint(0, 40)))
    if code == "o":
        return rng.choice(["/", ROOT, f"{ROOT}/job/999999", "/a/b_c"])
    if code == "g":
        return rng.choice(["", "s", "a{sv}"])
    if code == "b":
        return case != "empty" and rng.random() < 0.5
    if code in INT_LIMITS:
        low, high = INT_LIMITS[code]
        if case == "empty":
            return 0
        if case == "integer-limits":
            return rng.choice([low, high, 0, max(low, -1)])
        return rng.randint(low, high)
    if code == "d":
        return rng.choice([0.0, -1.0, 1e308, float("inf"), float("nan")])
    if sig == "ay":
        return _bytes(rng, case)
    if sig.startswith("a{"):
        return {} if case == "empty" else {simple(sig[2], rng, case): simple(
            sig[3:-1], rng, case)}
    if code == "a":
        count = 0 if case == "empty" else (100_000 if case == "huge-array"
                                            else rng.randint(0, 5))
        item = simple(sig[1:], rng, case if case != "huge-array" else "random")
        return [item] * count
    if code == "h":
        return PassedFile(rng.choice(list(PassedFile.KINDS)))
    if code == "v":
        return Variant("s", simple("s", rng, case))
    if code == "(":
        return [simple(t.signature, rng, case) for t in SignatureTree(sig).types[0].children]
    raise ValueError(f"no value for {sig!r}")


def _bytes(rng: random.Random, case: str) -> bytes:
    if case == "empty":
        return b""
    if case == "huge-bytes":
        return rng.choice([b"\xff" * HUGE, b"x" * 4097])
    if case == "huge-array":
        return bytes(100_000)
    if case == "nul-bytes":
        return b"pass\x00word\x00" + bytes(rng.randrange(256) for _ in range(8))
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))


@dataclass(frozen=True)
class PassedFile:
    """A file descriptor argument (``h``), opened when the call is sent:
    harmless files of the fuzzer's own, never one of the machine's."""

    kind: str
    KINDS = ("dev-null", "junk", "directory", "empty-pipe")

    def open(self) -> int:
        if self.kind == "dev-null":
            return os.open(os.devnull, os.O_RDONLY)
        if self.kind == "directory":
            return os.open(tempfile.gettempdir(), os.O_RDONLY | os.O_DIRECTORY)
        if self.kind == "empty-pipe":  # its writer is closed: reads end at once
            read, write = os.pipe()
            os.close(write)
            return read
        fd, path = tempfile.mkstemp(prefix="anklume-fuzz-")
        Path(path).unlink()
        os.write(fd, b"FORMAT=1\x00\xff\n" * 100)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd


def attach_files(value: Any, fds: list[int]) -> Any:
    """``value`` with each PassedFile opened, appended to ``fds`` and replaced
    by its index there (how D-Bus carries an ``h``)."""
    if isinstance(value, PassedFile):
        fds.append(value.open())
        return len(fds) - 1
    if isinstance(value, Variant):
        return Variant(value.signature, attach_files(value.value, fds))
    if isinstance(value, list):
        return [attach_files(v, fds) for v in value]
    if isinstance(value, dict):
        return {k: attach_files(v, fds) for k, v in value.items()}
    return value


WRONG = ["i", "u", "s", "b", "ay", "as", "a{sv}", "(ss)", "v", "d", "t", "o", "h"]


def _retyped(method: Method, rng: random.Random) -> tuple[str, list[Any]]:
    """The same number of arguments, each of another type than declared."""
    sigs = [rng.choice([w for w in WRONG if w != sig]) for _, sig in method.args] or ["s"]
    return "".join(sigs), [_any(s, rng) for s in sigs]


def _any(sig: str, rng: random.Random) -> Any:
    return simple(sig, rng, "random")


# ---- calls -------------------------------------------------------------------------
async def call(bus: MessageBus, msg: Message) -> Message | None:
    try:
        return await asyncio.wait_for(bus.call(msg), CALL_TIMEOUT)
    except TimeoutError:
        return None


class Fuzzer:
    def __init__(self, bus: MessageBus, address: str, rng: random.Random) -> None:
        self.bus, self.address, self.rng = bus, address, rng
        self.report = Report()

    async def send(self, case: str, method: Method, signature: str, body: list[Any],
                   path: str | None = None) -> None:
        self.report.cases.add(case)
        self.report.calls += 1
        fds: list[int] = []
        try:
            msg = Message(destination=DEST, path=path or method.path,
                          interface=method.interface, member=method.name, signature=signature,
                          body=attach_files(_make_safe(body), fds), unix_fds=fds)
            reply = await call(self.bus, msg)
        finally:
            for fd in fds:
                os.close(fd)
        self.judge(f"{case} {method.interface}.{method.name}", reply)
        answer = "none" if reply is None else (reply.error_name or "return")
        counts = self.report.by_case.setdefault(case, {})
        counts[answer] = counts.get(answer, 0) + 1

    def judge(self, what: str, reply: Message | None) -> None:
        if reply is None:
            self.report.violations.append(f"{what}: no reply in {CALL_TIMEOUT} s")
            return
        if reply.message_type == MessageType.METHOD_RETURN:
            self.report.replies["return"] = self.report.replies.get("return", 0) + 1
            return
        name = reply.error_name or ""
        self.report.replies[name] = self.report.replies.get(name, 0) + 1
        text = str(reply.body[0]) if reply.body else ""
        if name not in NAMED_ERRORS and not name.startswith("org.freedesktop.DBus.Error."):
            self.report.violations.append(f"{what}: error {name}: {text[:200]}")
        if "Traceback" in text or 'File "' in text:
            self.report.violations.append(f"{what}: a traceback in {name}: {text[:200]}")

    async def status_answers(self, after: str) -> None:
        t = time.monotonic()
        reply = await call(self.bus, Message(**STATUS))
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            self.report.violations.append(f"status did not answer after {after}")
        elif time.monotonic() - t > 5:
            self.report.violations.append(f"status took over 5 s after {after}")

    async def method_cases(self, method: Method) -> None:
        for case in ("empty", "boundary-strings", "huge-string", "huge-bytes", "nul-bytes",
                     "huge-array", "integer-limits", "random"):
            body = [simple(sig, self.rng, case) for _, sig in method.args]
            await self.send(case, method, method.signature, body)
        await self.send("wrong-types", method, *_retyped(method, self.rng))
        for kind in PassedFile.KINDS:  # to a method that takes files, or one that does not
            if "h" in method.signature:
                body = [PassedFile(kind) if sig == "h" else simple(sig, self.rng, "random")
                        for _, sig in method.args]
                await self.send("passed-files", method, method.signature, body)
            else:
                await self.send("passed-files", method, "h", [PassedFile(kind)])
        values = [simple(sig, self.rng, "random") for _, sig in method.args]
        await self.send("wrong-count", method, method.signature + "s", [*values, "extra"])
        if method.args:
            await self.send("wrong-count", method, method.signature[:-len(method.args[-1][1])],
                            values[:-1])
            await self.send("wrong-count", method, "", [])
        for path in (f"{ROOT}/job/999999", f"{ROOT}/slot/C"):
            await self.send("unknown-object", method, method.signature, values, path=path)
        await self.status_answers(f"{method.interface}.{method.name}")

    async def properties(self, interfaces: dict[str, str]) -> None:
        props = Method(ROOT, "org.freedesktop.DBus.Properties", "", [])
        for iface, path in sorted(interfaces.items()):
            for member, sig, body in (
                ("Get", "ss", [iface, "Nothing"]), ("Get", "ss", ["org.example.No", "X"]),
                ("GetAll", "s", ["org.example.No"]), ("GetAll", "s", [""]),
                ("Set", "ssv", [iface, "Version", _any("v", self.rng)]),
                ("Set", "ssv", [iface, "State", _any("v", self.rng)]),
                ("Get", "s", [iface]),
            ):
                props.name = member
                await self.send("properties", props, sig, body, path=path)
        await self.status_answers("Properties")

    async def invalid_on_the_wire(self, method: Method) -> None:
        """Messages the bus itself must refuse: each on a connection of its own,
        which the bus may drop; anklumed never sees them."""
        for case, path, body in (("nul-in-string", method.path, ["a\x00b"]),
                                 ("invalid-object-path", "//org//anklume", ["A"])):
            self.report.cases.add(case)
            self.report.calls += 1
            throwaway = await MessageBus(bus_address=self.address).connect()
            try:
                msg = Message(destination=DEST, path=method.path, interface=method.interface,
                              member=method.name, signature="s", body=body)
                msg.path = path  # set after: the constructor would refuse it
                reply = await asyncio.wait_for(throwaway.call(msg), 5)
                if reply is not None:
                    self.judge(f"{case} {method.name}", reply)
            except (TimeoutError, EOFError, OSError, ConnectionError):
                pass  # dropped by the bus, as it should
            except Exception as e:  # dbus-fast raises its own types on a dropped bus
                if "Traceback" in str(e):
                    self.report.violations.append(f"{case}: {e}")
            finally:
                if throwaway.connected:  # dbus-fast logs a traceback for a closed one
                    throwaway.disconnect()
                # Retrieve how it ended (EOFError, expected), or dbus-fast
                # reports it as never retrieved.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(throwaway.wait_for_disconnect(),  # type: ignore[no-untyped-call]
                                           5)
            await self.status_answers(case)

    async def random_calls(self, methods: list[Method], rounds: int) -> None:
        for _ in range(rounds):
            method = self.rng.choice(methods)
            body = [simple(sig, self.rng, self.rng.choice(["random", "boundary-strings"]))
                    for _, sig in method.args]
            await self.send("random", method, method.signature, body)
        await self.status_answers("random calls")


async def fuzz(address: str, seed: int, rounds: int) -> Report:
    bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
    try:
        live = await introspect(bus)
        paths = {m.interface: m.path for m in live if "/job/" not in m.path}
        methods = {(m.path, m.interface, m.name): m for m in from_xml(paths) + live}
        fuzzer = Fuzzer(bus, address, random.Random(seed))  # noqa: S311 - seeded on purpose
        fuzzer.report.methods = sorted(f"{i}.{n} {p}" for p, i, n in methods)
        for method in sorted(methods.values(), key=lambda m: (m.path, m.name)):
            await fuzzer.method_cases(method)
        await fuzzer.properties({m.interface: m.path for m in methods.values()})
        await fuzzer.invalid_on_the_wire(min(methods.values(), key=lambda m: m.name))
        await fuzzer.random_calls(list(methods.values()), rounds)
        return fuzzer.report
    finally:
        bus.disconnect()


async def flood(address: str, spec: dict[str, Any]) -> dict[str, int]:
    """``spec["count"]`` concurrent calls of one method from one connection;
    how many got each answer. With ``"no_reply": true`` the calls ask for
    none (NO_REPLY_EXPECTED): they are only sent, and counted as such."""
    bus = await MessageBus(bus_address=address).connect()
    try:
        flags = MessageFlag.NO_REPLY_EXPECTED if spec.get("no_reply") else MessageFlag.NONE
        messages = [Message(destination=DEST, path=spec["path"], interface=spec["interface"],
                            member=spec["member"], signature=spec.get("signature", ""),
                            body=spec.get("body", []), flags=flags)
                    for _ in range(spec["count"])]
        if spec.get("no_reply"):
            await asyncio.gather(*(bus.send(msg) for msg in messages))  # written out
            return {"sent": len(messages)}
        calls = [call(bus, msg) for msg in messages]
        answers: dict[str, int] = {}
        for reply in await asyncio.gather(*calls):
            name = "none" if reply is None else (reply.error_name or "return")
            answers[name] = answers.get(name, 0) + 1
        return answers
    finally:
        bus.disconnect()


def drop_privileges(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bus", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=200, help="random calls at the end")
    parser.add_argument("--user", help="drop to this user before connecting")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole fuzz N times")
    parser.add_argument("--flood", type=json.loads, metavar="JSON",
                        help='instead: {"path", "interface", "member", "signature", "body", '
                             '"count", "no_reply"}: that many concurrent calls; prints the '
                             'answers')
    args = parser.parse_args()
    if args.user:
        drop_privileges(args.user)
    if args.flood:
        print(json.dumps(asyncio.run(flood(args.bus, args.flood))))
        return 0
    for n in range(args.repeat):
        report = asyncio.run(fuzz(args.bus, args.seed + n, args.rounds))
        print(report.as_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
