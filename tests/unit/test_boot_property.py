"""Random raw PERSIST states, garbage bytes included: the shell and anklumed agree.

Each example writes a PERSIST directory from bytes (valid values, their
near misses, and noise) and compares ``anklume-state.sh decide`` under
busybox sh with ``anklumed.slots.boot_decision.decide`` on the same files.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anklumed.persist import PersistDir
from anklumed.slots import boot_decision

SCRIPT = Path(__file__).resolve().parents[2] / "initramfs" / "anklume-state.sh"

# Bytes that matter to a parser: separators, whitespace in its ASCII and
# UTF-8 forms (Python strips U+00A0, splits at U+2028), quotes, NUL, and
# bytes that are not UTF-8.
TRICKY = [b"\n", b"\r\n", b"\r", b"\x0b", b"\x1c", b"\x1f", b"\t", b" ", b"\xc2\xa0",
          b"\xc2\x85", b"\xe2\x80\xa8", b"\xe3\x80\x80", b"\x00", b"\xff", b"\xe2\x84\xaa",
          b"=", b"#", b'"', b"'", b"0", b"-", b"+"]
noise = st.lists(st.sampled_from(TRICKY) | st.binary(max_size=3), max_size=4).map(b"".join)
STAMPS = [b"2026-11-01T10:00:00Z", b"2026-11-20T08:30:00Z", b"2026-13-01T10:00:00Z",
          b"1799999999", b"2026-11-20T08:30:00+00:00", b"none"]


SPACES = [b" ", b"\t", b"\n", b"\r\n", b"\x0b", b"\x1c", b"\x1f", b"\xc2\xa0", b"\xc2\x85",
          b"\xe2\x80\x8a", b"\xe2\x80\xa8", b"\xe3\x80\x80"]
pad = st.lists(st.sampled_from(SPACES), max_size=2).map(b"".join)


def around(core: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A value as it is, padded with (Unicode) whitespace, or with noise."""
    return st.one_of(
        core,
        st.tuples(pad, core, pad).map(b"".join),
        st.tuples(noise, core, noise).map(b"".join),
    )


slot = around(st.sampled_from([b"A", b"B", b"a", b"b", b"C", b""]))
number = around(
    st.integers(min_value=-2, max_value=12).map(lambda n: str(n).encode())
    | st.sampled_from([b"010", b"08", b"09", b"0003", b"99999999999999999999", b"9999"])
)
status = around(st.sampled_from([b"ok", b"OK", b"Ok", b"pending", b"failed", b"empty",
                                 b"okay", b'"ok"', b"O\xe2\x84\xaa"]))
stamp = around(st.sampled_from(STAMPS))
line_key = st.sampled_from([b"STATUS", b"status", b"LAST_GOOD_AT", b"FROM", b"TO",
                            b"TO_LAST_GOOD_AT", b"REASON", b"VERSION", b"ST ATUS", b"_"])
line = st.one_of(
    st.tuples(line_key, around(st.just(b"=")), status | stamp | slot).map(b"".join),
    st.tuples(line_key, around(st.just(b"=")), status | stamp | slot).map(b"".join),
    noise,
)
kv_file = st.lists(line, max_size=5).flatmap(
    lambda lines: st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b"\x0c", b"\x1c", b"\x1d",
                                            b"\x1e", b"\xc2\x85", b"\xe2\x80\xa9"]),
                           min_size=len(lines), max_size=len(lines))
    .map(lambda seps: b"".join(a + b for a, b in zip(lines, seps, strict=True)))
)
maybe = st.none() | st.binary(max_size=6)
cmdline = st.none() | st.lists(
    st.sampled_from([b"quiet", b"anklume.slot=A", b"anklume.slot=b", b"anklume.slot=",
                     b"anklume.slot=C", b"\x00", b"\t", b" ", b"\n"]),
    max_size=4,
).map(b" ".join)

STATE = st.fixed_dictionaries({
    "ab-state": slot | maybe,
    "boot-count": number | maybe,
    "boot-attempts": number | maybe,
    "slots/A.meta": kv_file | maybe,
    "slots/B.meta": kv_file | maybe,
    "last-rollback": kv_file | maybe,
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=STATE, cmd=cmdline)
def test_shell_and_anklumed_agree(files: dict[str, bytes | None], cmd: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        persist = Path(tmp, "persist")
        (persist / "slots").mkdir(parents=True)
        for name, data in files.items():
            if data is not None:
                persist.joinpath(name).write_bytes(data)
        args = [str(persist)]
        if cmd is not None:
            Path(tmp, "cmdline").write_bytes(cmd)
            args.append(str(Path(tmp, "cmdline")))
        result = subprocess.run(
            ["busybox", "sh", str(SCRIPT), "decide", *args],
            capture_output=True, timeout=30, check=False,
        )
        assert result.returncode == 0, result.stderr
        decision, inputs = boot_decision.decide(PersistDir(persist), cmd)
        want = boot_decision.as_lines(decision, inputs)
        got = dict(
            line.split("=", 1)
            for line in result.stdout.decode("utf-8", "replace").splitlines()
            if line.split("=", 1)[0] in want
        )
        assert got == want
