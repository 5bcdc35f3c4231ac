"""The dbus-fast version the fixes were checked against (dbus_fixes.apply),
and the socket writer's handling of a bus that went away."""

import asyncio
import gc
import socket
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from anklumed.service import dbus_fixes


@pytest.mark.parametrize(("text", "parsed"), [
    ("2.44.1", (2, 44, 1)), ("2.46.4", (2, 46, 4)), ("3.0.0rc1", (3, 0, 0)),
    ("2.44.1.post1", (2, 44, 1)), ("0.2.3", (0, 2, 3)), ("dev", ()),
])
def test_version_tuple(text: str, parsed: tuple[int, ...]) -> None:
    assert dbus_fixes.version_tuple(text) == parsed


@pytest.mark.parametrize("version", ["2.44.0", "0.2.3", "3.0.0", "5.1.2", "dev"])
def test_an_untested_dbus_fast_is_refused(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(dbus_fixes, "installed_version", version)
    with pytest.raises(RuntimeError, match=f"dbus-fast {version} is outside"):
        dbus_fixes.apply()


@pytest.mark.parametrize("version", ["2.44.1", "2.46.4", "2.99.0"])
def test_the_tested_range_is_accepted(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(dbus_fixes, "installed_version", version)
    dbus_fixes.apply()  # applying twice is harmless: the same functions again


def test_a_send_lost_with_the_bus_leaves_no_unread_exception() -> None:
    """The bus gone (the peer closed): the send's future holds the error,
    the bus is finalized with it, and the future counts as read, so asyncio
    logs no "exception was never retrieved" traceback when it is collected
    (a signal's send is awaited by no one)."""
    loop = asyncio.new_event_loop()
    unread: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: unread.append(context))
    ours, theirs = socket.socketpair()
    theirs.close()
    finalized: list[Exception | None] = []
    fut: asyncio.Future[None] | None = loop.create_future()
    writer = SimpleNamespace(
        sock=ours, fd=ours.fileno(), loop=loop, buf=None, offset=0, fut=None,
        unix_fds=None, negotiate_unix_fd=False, messages=deque([(b"signal", None, fut)]),
        bus=SimpleNamespace(_user_disconnect=False, _finalize=finalized.append))
    try:
        dbus_fixes._write_callback(writer)
        assert fut is not None and fut.done()  # failed (not read here: reading would mark it read)
        assert finalized and isinstance(finalized[0], BrokenPipeError)
        fut = writer.fut = None
        finalized.clear()  # the error's traceback holds the future too
        gc.collect()
        assert unread == []
    finally:
        ours.close()
        loop.close()


def test_a_call_waiting_when_the_bus_goes_away_leaves_no_unread_exception() -> None:
    """The bus lost while a call waits for its reply: dbus-fast hands the
    call's future the connection's error; the daemon ends before the task
    that awaited it reads it (asyncio cancels it), and asyncio would log a
    "never retrieved" traceback when the future is collected (CI, service
    tier: BrokenPipeError after "lost the bus connection"). A caller that
    awaits still gets the error."""
    from dbus_fast.aio.message_bus import MessageBus

    reply_handler: Any = MessageBus._reply_handler  # as installed by dbus_fixes.apply
    loop = asyncio.new_event_loop()
    unread: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: unread.append(context))
    try:
        forgotten: asyncio.Future[None] | None = loop.create_future()
        reply_handler(None, forgotten, None, BrokenPipeError(32, "Broken pipe"))
        forgotten = None
        gc.collect()
        assert unread == []

        awaited: asyncio.Future[None] = loop.create_future()
        reply_handler(None, awaited, None, EOFError())
        with pytest.raises(EOFError):
            loop.run_until_complete(awaited)
    finally:
        loop.close()
