"""dbus-fast's fixes for every client connection (anklume_client/dbus_fixes.py):
the version they were checked against, the socket writer's handling of a bus
that went away, and the calls still waiting then."""

import asyncio
import gc
import os
import pwd
import shutil
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from dbus_fast.aio import message_bus as aio_bus

from anklume_client import dbus_fixes
from anklume_client.connection import Connection
from anklume_client.errors import DISCONNECTED, ClientError, ExitCode
from anklume_client.words import explain
from anklume_desktop.tray import applet
from devtools.desktop_session import SESSION_BUS, bus_daemon

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "parsed"), [
    ("2.44.1", (2, 44, 1)), ("2.46.4", (2, 46, 4)), ("3.0.0rc1", (3, 0, 0)),
    ("2.44.1.post1", (2, 44, 1)), ("0.2.3", (0, 2, 3)), ("dev", ()),
])
def test_version_tuple(text: str, parsed: tuple[int, ...]) -> None:
    assert dbus_fixes.version_tuple(text) == parsed


@pytest.mark.parametrize("version", ["2.44.0", "0.2.3", "3.0.0", "5.1.2", "dev"])
def test_an_untested_dbus_fast_is_refused_in_a_sentence(monkeypatch: pytest.MonkeyPatch,
                                                        version: str) -> None:
    monkeypatch.setattr(dbus_fixes, "installed_version", version)
    assert dbus_fixes.refusal() == (
        f"dbus-fast {version} is outside the tested range >=2.44.1,<3: review "
        "anklume_client/dbus_fixes.py and anklumed/service/dbus_fixes.py")
    # nothing patched, nothing raised: the connection refuses (below)
    def upstream(*_: Any) -> None:
        """Stands for dbus-fast's own method."""

    monkeypatch.setattr(aio_bus.MessageBus, "_reply_handler", upstream)
    dbus_fixes.apply()
    assert aio_bus.MessageBus._reply_handler is upstream


@pytest.mark.parametrize("version", ["2.44.1", "2.46.4", "2.99.0"])
def test_the_tested_range_is_accepted(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(dbus_fixes, "installed_version", version)
    assert dbus_fixes.refusal() is None
    dbus_fixes.apply()  # applying twice is harmless: the same functions again


def test_a_connection_on_an_untested_dbus_fast_refuses_in_a_sentence(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dbus_fixes, "installed_version", "3.0.0")
    with pytest.raises(ClientError) as refused:
        asyncio.run(Connection.connect("unix:path=/nonexistent"))
    assert explain(refused.value) == (dbus_fixes.refusal(), ExitCode.INCOMPATIBLE)


def test_the_tray_on_an_untested_dbus_fast_says_so_in_a_sentence(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(dbus_fixes, "installed_version", "3.0.0")
    assert applet.main([]) == 1
    assert capsys.readouterr().err == f"anklume-tray: {dbus_fixes.refusal()}\n"


def test_a_send_lost_with_the_bus_leaves_no_unread_exception() -> None:
    """The bus gone (the peer closed): the send's future holds the error,
    the bus is finalized with it, and the future counts as read, so asyncio
    logs no "exception was never retrieved" traceback when it is collected
    (a signal's send is awaited by no one). A message queued behind it fails
    with it, rather than wait for ever on a connection that is gone."""
    loop = asyncio.new_event_loop()
    unread: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: unread.append(context))
    ours, theirs = socket.socketpair()
    theirs.close()
    finalized: list[Exception | None] = []
    fut: asyncio.Future[None] | None = loop.create_future()
    queued: asyncio.Future[None] | None = loop.create_future()
    writer = SimpleNamespace(
        sock=ours, fd=ours.fileno(), loop=loop, buf=None, offset=0, fut=None,
        unix_fds=None, negotiate_unix_fd=False,
        messages=deque([(b"signal", None, fut), (b"queued", None, queued)]),
        bus=SimpleNamespace(_user_disconnect=False, _finalize=finalized.append))
    try:
        dbus_fixes._write_callback(writer)
        # failed (not read here: reading would mark it read)
        assert fut is not None and fut.done() and queued is not None and queued.done()
        assert finalized and isinstance(finalized[0], BrokenPipeError)
        assert writer.buf is None and not writer.messages
        fut = queued = writer.fut = None
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


@pytest.fixture
def lone_bus(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private dbus-daemon (its address, and the process: a test stops it)."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("no dbus-daemon on this machine")
    config = tmp_path / "bus.conf"
    config.write_text(SESSION_BUS.format(socket=tmp_path / "bus",
                                         user=pwd.getpwuid(os.getuid()).pw_name))
    address, daemon = bus_daemon(config)
    try:
        yield address, daemon
    finally:
        daemon.kill()
        daemon.wait()


# A client of anklume_client alone, as the tray or anklumectl is: which
# writer and reply handler its connection has; a call waits for an answer that
# never comes when the bus goes away; then two signals are sent (the first
# finds the loss, upstream raised EBADF for the second), and the call is told.
CLIENT = """
import asyncio, gc, sys
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from anklume_client import ClientError, Connection

async def main(address):
    conn = await Connection.connect(address)
    for method in (conn.bus._writer.write_callback, conn.bus._reply_handler):
        print(method.__func__.__module__, method.__name__, flush=True)
    silent = await MessageBus(bus_address=address).connect()
    silent.add_message_handler(lambda msg: msg.member == "Hang" or None)  # taken, never answered
    call = asyncio.ensure_future(conn.call("/", "org.anklume.Test", "Hang",
                                           destination=silent.unique_name))
    for _ in range(500):  # sent, and waiting (5 s at most: else the end says what came)
        if conn.bus._method_return_handlers:
            break
        await asyncio.sleep(0.01)
    print("waiting", flush=True)
    sys.stdin.readline()  # the bus daemon stopped meanwhile
    for _ in range(2):
        conn.bus.send(Message.new_signal("/org/anklume/Live1", "org.anklume.Test", "Changed"))
    try:
        await call
    except ClientError as e:
        print(e.name, flush=True)
    await conn.disconnected()

asyncio.run(main(sys.argv[1]))
gc.collect()  # a future left unread would be logged now
print("ended", flush=True)
"""


def test_a_client_connection_has_the_fixes(
        lone_bus: tuple[str, subprocess.Popen[bytes]]) -> None:
    """The tray's buses end at logout, anklumectl's when the system bus
    restarts: upstream raised EBADF to the sender of the signal after the
    loss, and left the loss unread in the calls waiting then (logged as a
    traceback if their callers never read it: the test of the reply handler above).
    A fresh interpreter: this test process may have applied them already
    (anklumed.service imports them too)."""
    address, daemon = lone_bus
    client = subprocess.Popen([sys.executable, "-c", CLIENT, address], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert client.stdout is not None
        assert [client.stdout.readline() for _ in range(3)] == [
            "anklume_client.dbus_fixes _write_callback\n",
            "anklume_client.dbus_fixes _reply_handler\n", "waiting\n"]
        daemon.terminate()
        daemon.wait()
        out, err = client.communicate("go\n", timeout=60)
    finally:
        client.kill()
        client.wait()
    assert (client.returncode, out, err) == (0, f"{DISCONNECTED}\nended\n", "")


async def test_sending_after_the_bus_daemon_went_raises_nothing(
        lone_bus: tuple[str, subprocess.Popen[bytes]]) -> None:
    """The bus daemon gone, and the reader has not seen it yet: the first
    message sent finds it (EPIPE) and finalizes the bus. Upstream's
    schedule_write then watched the closed socket for writability, and its
    EBADF reached whoever sent: anklumed's observer publishing a change (seen
    in the systemd guest: "a state listener failed", an EBADF traceback), or
    a method's reply. Nothing is raised to a sender, then or later; the loss
    is said once, by the disconnect future (anklumed.main)."""
    address, daemon = lone_bus
    bus = await MessageBus(bus_address=address).connect()
    daemon.terminate()
    daemon.wait()  # not a turn of the loop: the reader has not seen the end
    for _ in range(2):  # the one that finds the loss, and one after it
        bus.send(Message.new_signal("/org/anklume/Live1", "org.anklume.Live1.Test", "Changed"))
    assert not bus.connected
    with pytest.raises(BrokenPipeError):
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
