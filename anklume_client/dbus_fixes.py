"""Fixes for dbus-fast 2.x on every connection, client or daemon, applied
once at import.

Here, in the client library, because every side needs them and may import
it: anklumectl and the desktop clients (the tray, on the session bus and the
system bus) import nothing of anklumed (tests/unit/test_layering.py), and the
image installs this library wherever anklumed is (anklume_image/install.py).
``anklume_client.connection`` imports this module, so any connection made
through the library has them; anklumed/service/dbus_fixes.py imports it and
adds the daemon's own (error replies).

1. The socket writer. Upstream ``_MessageWriter.write_callback`` treats
``EAGAIN`` from a full socket buffer as fatal and drops the whole bus
connection: with many clients asking at once
(tests/service/test_robustness.py::test_fifty_concurrent_clients) the daemon
lost the bus. This copy of the method differs only in waiting for the
socket to become writable again, in marking the exception of a send
that failed as read (a signal's send is awaited by no one: asyncio would log
its traceback when the bus goes away), and in dropping what is left to write
once a send failed (else the send that found the bus gone, and every one
after it, raised EBADF to its sender: tests/unit/test_client_dbus_fixes.py).

2. Pending calls when the bus goes away. dbus-fast hands the connection's
error to every call still waiting for its reply (``_reply_handler``); when
the program then ends (anklumed.main, the bus lost; the tray at logout),
asyncio cancels the tasks that awaited those calls before they read it, and
logs each unread error as a traceback (seen in CI: "Future exception was
never retrieved", BrokenPipeError, after the one line saying the bus was
lost). The error is marked as read as it is set; a caller that awaits the
call still gets it raised. A D-Bus error reply is left as upstream has it.

pyproject.toml allows dbus-fast 2.44.1 (Debian 13's python3-dbus-fast) up to
the next major, and any other is refused (``refusal``); on a major upgrade, check
whether these are still needed (tests/service/test_robustness.py and
tests/unit/test_client_dbus_fixes.py).
"""

import array
import re
import socket
from typing import Any

from dbus_fast import DBusError
from dbus_fast.__version__ import __version__ as installed_version
from dbus_fast.aio import message_bus as aio_bus

# The range pyproject.toml allows: [first, next major).
OLDEST = (2, 44, 1)
NEXT_MAJOR = 3


def _write_callback(self: Any, remove_writer: bool = True) -> None:
    sock = self.sock
    try:
        while True:
            if self.buf is None:
                if not self.messages:
                    if remove_writer:
                        self.loop.remove_writer(self.fd)
                    return
                buf, unix_fds, fut = self.messages.popleft()
                self.unix_fds = unix_fds
                self.buf = memoryview(buf)
                self.offset = 0
                self.fut = fut
            try:
                if self.unix_fds and self.negotiate_unix_fd:
                    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", self.unix_fds))]
                    self.offset += sock.sendmsg([self.buf[self.offset:]], ancdata)
                    self.unix_fds = None
                else:
                    self.offset += sock.send(self.buf[self.offset:])
            except (BlockingIOError, InterruptedError):
                # The loop calls us again once the socket is writable: as its
                # writer, or through schedule_write, which adds the writer
                # after a first attempt that left anything to write.
                return
            if self.offset < len(self.buf):
                return
            self.buf = None
            aio_bus._future_set_result(self.fut, None)
    except Exception as e:
        # Nothing more can be written on this connection: the rest fails with
        # this send. Left pending, it made schedule_write (our caller when a
        # send finds the loss) watch the socket _finalize closes: its EBADF
        # was raised to whoever sent, the daemon publishing a change or
        # answering a call, a client sending a signal.
        for fut in (self.fut, *(queued for _buf, _fds, queued in self.messages)):
            _send_failed(fut, e, self.bus._user_disconnect)
        self.buf = None
        self.messages.clear()
        self.bus._finalize(e)


def _send_failed(fut: Any, e: Exception, user_disconnect: bool) -> None:
    if user_disconnect:
        aio_bus._future_set_result(fut, None)
        return
    aio_bus._future_set_exception(fut, e)
    # A signal's send future has no one awaiting it: unread, asyncio logs its
    # exception as a traceback. The connection's loss is reported once, by the
    # disconnect future (anklumed.main, the client's Connection.disconnected).
    if fut is not None and not fut.cancelled():
        fut.exception()


def _reply_handler(self: Any, future: Any, reply: Any, err: Exception | None) -> None:
    """Upstream's ``MessageBus._reply_handler``, but the connection's loss
    is not left to be logged by each call that was waiting."""
    if err is None:
        aio_bus._future_set_result(future, reply)
        return
    aio_bus._future_set_exception(future, err)
    if not isinstance(err, DBusError) and future.done() and not future.cancelled():
        future.exception()  # read: the loss is reported once, by the disconnect future


def version_tuple(version: str) -> tuple[int, ...]:
    """"2.44.1" → (2, 44, 1); a suffix (".post1", "rc1") is ignored."""
    parts = []
    for part in version.split(".")[:3]:
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def refusal() -> str | None:
    """The sentence refusing the installed dbus-fast, or None for a version
    these fixes were checked against: they replace its private methods,
    which another version may have changed."""
    # The package's own __version__, not importlib.metadata: that import alone
    # cost every anklumectl call 0.35 s in the TCG guests.
    if OLDEST <= version_tuple(installed_version) < (NEXT_MAJOR,):
        return None
    return (f"dbus-fast {installed_version} is outside the tested range "
            f">={'.'.join(map(str, OLDEST))},<{NEXT_MAJOR}: "
            "review anklume_client/dbus_fixes.py and anklumed/service/dbus_fixes.py")


def apply() -> None:
    """Patches a tested dbus-fast; leaves another one as it is, never raising
    at import (a traceback on a terminal): a connection through this library
    then refuses in one sentence (Connection.connect), and anklumed does not
    start (anklumed/service/dbus_fixes.py)."""
    if refusal() is not None:
        return
    aio_bus._MessageWriter.write_callback = _write_callback  # type: ignore[method-assign]
    aio_bus.MessageBus._reply_handler = _reply_handler  # type: ignore[method-assign]


apply()
