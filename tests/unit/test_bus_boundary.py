"""The bus boundary's pure parts: the sanitizer, the refusal log, Refresh's limiter."""

import asyncio
import logging

import pytest
from dbus_fast import DBusError, MessageFlag, Variant
from dbus_fast._private.marshaller import Marshaller

from anklumed.errors import ALL_ERRORS, Failed, NotAuthorized
from anklumed.service.boundary import (
    CALLER,
    EXPECTED_REFUSALS,
    MAX_ITEMS,
    MAX_TEXT,
    Caller,
    RateLimitedLog,
    capped,
    clean_text,
    published,
    published_body,
    to_dbus_error,
)
from anklumed.service.data_objects import Coalesced

HOSTILE = "a\x00b\x1b[2J\nc\ud800\u202e\x7f\x85é😀"


def assert_safe(text: str) -> None:
    """What the bus and a terminal take: valid UTF-8, no control character."""
    text.encode("utf-8")  # raises on a lone surrogate
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)
    assert "\u202e" not in text and len(text) <= MAX_TEXT


def strings_in(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Variant):
        return strings_in(value.value)
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings_in(v)]
    return []


def test_clean_text_escapes_and_bounds() -> None:
    assert clean_text(HOSTILE) == "a\\x00b\\x1b[2J\\x0ac\ufffd\\u202e\\x7f\\x85é😀"
    assert_safe(clean_text(HOSTILE))
    long = clean_text("x" * 100_000)
    assert len(long) == MAX_TEXT and long.endswith("…")
    assert clean_text("plain text: /dev/sdb1 (ok)") == "plain text: /dev/sdb1 (ok)"


@pytest.mark.parametrize(("signature", "value"), [
    ("s", HOSTILE),
    ("as", [HOSTILE, "ok"]),
    ("a{ss}", {HOSTILE: HOSTILE, "reason": "a\x00b"}),
    ("a(suts)", [[HOSTILE, 1, 2, HOSTILE]]),
    ("a(ssstssss)", [[HOSTILE] * 3 + [7] + [HOSTILE] * 4]),
    ("a{sv}", {"k": Variant("s", HOSTILE), HOSTILE: Variant("as", [HOSTILE]),
               "n": Variant("a{sv}", {"deep": Variant("(ss)", [HOSTILE, HOSTILE])})}),
    ("aas", [[HOSTILE], [HOSTILE, HOSTILE]]),
    ("(sa{ss}as)", [HOSTILE, {HOSTILE: HOSTILE}, [HOSTILE]]),
])
def test_every_nested_string_is_cleaned(signature: str, value: object) -> None:
    clean = published(signature, value)
    found = strings_in(clean)
    assert found
    for text in found:
        assert_safe(text)
    Marshaller(signature, [clean]).marshall()  # and it goes on the wire


def test_object_paths_signatures_arrays_and_bytes() -> None:
    assert published("o", "/org/anklume/Live1/job/3") == "/org/anklume/Live1/job/3"
    assert published("o", "/bad//path\x00") == "/"
    assert published("ao", ["/a", "not a path", ""]) == ["/a", "/", "/"]
    assert published("g", "a{sv}") == "a{sv}" and published("g", "a{") == ""
    assert len(published("as", ["x"] * (MAX_ITEMS + 50))) == MAX_ITEMS
    key = b"\x00\xff secret \x1b"
    assert published("ay", key) == key  # bytes are not text: untouched
    assert published_body("sss", ["failed", "", HOSTILE])[2] == clean_text(HOSTILE)
    # A value of the wrong shape is left for the signature check to refuse.
    assert published("as", 42) == 42 and published("(ss)", ["one"]) == ["one"]


def test_capped_says_how_many_were_left_out() -> None:
    assert capped(["a", "b"], 5, 10, "problems") == ["a", "b"]
    out = capped([f"problem {i} " + "x" * 500 for i in range(30_000)], 20, 300, "problems")
    assert len(out) == 21 and out[-1] == "… and 29980 more problems"
    assert all(len(p) <= 300 for p in out)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_bursts_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t"), "refusals", burst=5, period=10.0,
                             clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        written = [limited.log(":1.7", logging.INFO, "refused %d", n) for n in range(1000)]
        assert sum(written) == 5 and len(caplog.records) == 5
        limited.log(":1.8", logging.INFO, "another caller")  # its own bucket
        assert len(caplog.records) == 6
        clock.now += 10  # one token back: the count first, then the line
        assert limited.log(":1.7", logging.INFO, "refused again")
        assert [r.getMessage() for r in caplog.records[-2:]] == [
            "995 more refusals from :1.7 suppressed", "refused again"]
        limited.log(":1.7", logging.INFO, "over")
        limited.flush()
        assert caplog.records[-1].getMessage() == "1 more refusals from :1.7 suppressed"


def test_rate_limited_log_bounds_many_callers(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t"), "refusals", total_burst=50,
                             max_keys=256, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for n in range(2000):
            limited.log(f":1.{n}", logging.INFO, "refused")
        assert len(caplog.records) == 50 and len(limited._keys) == 256
        limited.flush()
    counts = [r.getMessage() for r in caplog.records[50:]]
    assert len(counts) == 11 and counts[-1] == "1940 more refusals from other callers suppressed"


def test_expected_refusals_are_one_line_without_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    token = CALLER.set(Caller(sender=":1.99", flags=MessageFlag.NONE))
    try:
        with caplog.at_level(logging.INFO, logger="anklumed.service.boundary"):
            for cls in EXPECTED_REFUSALS:
                err = to_dbus_error(cls("you may not\x00 do this\nsecond line"), "Setup")
                assert err.type == cls("").dbus_name
                assert_safe(err.text)
            to_dbus_error(RuntimeError("internals /etc/shadow"), "Setup")
    finally:
        CALLER.reset(token)
    records = caplog.records
    refusals = [r for r in records if "refused" in r.getMessage()]
    assert refusals and all(r.exc_info is None for r in refusals)
    assert all("\n" not in r.getMessage() for r in refusals)
    unexpected = [r for r in records if "unexpectedly" in r.getMessage()]
    assert len(unexpected) == 1 and unexpected[0].exc_info is not None
    assert set(EXPECTED_REFUSALS) | {Failed} == set(ALL_ERRORS)
    assert NotAuthorized in EXPECTED_REFUSALS


def test_unexpected_errors_keep_their_traceback_but_cannot_flood(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="anklumed.service.boundary"):
        for _ in range(200):
            err = to_dbus_error(KeyError("x"), "Refresh")
            assert err.type.endswith(".Failed") and "Traceback" not in err.text
    assert 1 <= len([r for r in caplog.records if r.exc_info]) <= 10


async def test_refresh_probes_are_coalesced_and_spaced() -> None:
    clock = Clock()
    probes = []
    gate = asyncio.Event()

    async def probe() -> None:
        probes.append(clock.now)
        await gate.wait()

    refresh = Coalesced(probe, 5.0, clock=clock)
    waiting = [asyncio.ensure_future(refresh()) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*waiting)
    assert len(probes) == 1  # fifty callers, one probe
    await refresh()
    assert len(probes) == 1  # within the interval: answered from it
    clock.now += 5.0
    await refresh()
    assert len(probes) == 2
    # A caller that gives up does not cancel the probe others wait for.
    clock.now += 5.0
    gate.clear()
    first, second = asyncio.ensure_future(refresh()), asyncio.ensure_future(refresh())
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    await second
    assert len(probes) == 3


def test_the_fuzzer_never_names_a_disk_of_this_machine() -> None:
    """What data.disks.choose would make of each string the fuzzer sends
    (its resolved name) is no block device here, whatever the case."""
    import os
    import random
    from pathlib import Path

    from devtools.dbus_fuzz import BOUNDARY_STRINGS, safe_text, simple

    devices = set(os.listdir("/sys/class/block"))
    rng = random.Random(7)
    crafted = [f"{prefix}{name}" for name in devices
               for prefix in ("", "/dev/", "/x/", "/dev/../dev/", "../")]
    generated = [simple("s", rng, case) for case in ("random", "boundary-strings", "empty")
                 for _ in range(300)]
    for value in [*crafted, *BOUNDARY_STRINGS, *generated, "/", ".", ".."]:
        safe = safe_text(value)
        path = safe if safe.startswith("/") else f"/dev/{safe}"
        assert Path(os.path.realpath(path)).name not in devices, (value, safe)
        assert not safe or not os.path.lexists(safe), (value, safe)


def test_quirk_error_class_mapping() -> None:
    for cls in ALL_ERRORS:
        err = to_dbus_error(cls("m"), "x")
        assert isinstance(err, DBusError) and err.type.endswith(cls.dbus_suffix)
