"""Fixes for dbus-fast 2.x, applied once at import.

1. The socket writer. Upstream ``_MessageWriter.write_callback`` treats
``EAGAIN`` from a full socket buffer as fatal and drops the whole bus
connection: with many clients asking at once
(tests/service/test_robustness.py::test_fifty_concurrent_clients) the daemon
lost the bus. This copy of the method differs only in waiting for the
socket to become writable again, in marking the exception of a send
that failed as read (a signal's send is awaited by no one: asyncio would log
its traceback when the bus goes away), and in dropping what is left to write
once a send failed (else the send that found the bus gone, and every one
after it, raised EBADF to its sender: tests/unit/test_dbus_fixes.py).

2. Pending calls when the bus goes away. dbus-fast hands the connection's
error to every call still waiting for its reply (``_reply_handler``); when
the daemon then ends (anklumed.main, the bus lost), asyncio cancels the
tasks that awaited those calls before they read it, and logs each unread
error as a traceback (seen in CI: "Future exception was never retrieved",
BrokenPipeError, after the one line saying the bus was lost). The error is
marked as read as it is set; a caller that awaits the call still gets it
raised. A D-Bus error reply is left as upstream has it.

3. Error replies. Upstream's ``SendReply`` answers an exception that is not a
DBusError with its traceback (``The service interface raised an error: …``),
and the Properties handler and a method's return value that does not fit its
signature go through it. This ``_exit`` answers a short ``Error.Failed``
instead and logs the bug, rate-limited; what gets logged of a refusal is
decided at the boundary (boundary.to_dbus_error). dbus-next 0.2.3 also
logged every error reply it had already sent (its ``__exit__`` did not
return what ``_exit`` decided): dbus-fast returns it. A call whose task is
cancelled (only when the daemon ends) is not answered, and nothing is logged.

4. Calls that want no answer (NO_REPLY_EXPECTED). Upstream logs the error
of each with its traceback ("unexpected exception in future"): any caller
wrote one per refused call, past the boundary's rate limit
(tests/service/test_bus_boundary.py, no-reply-flood). A refusal is not
logged again; a bug is, rate-limited.

pyproject.toml allows dbus-fast 2.44.1 (Debian 13's python3-dbus-fast) up to
the next major; on a major upgrade, check whether these are still needed
(tests/service/test_robustness.py, test_bus_boundary.py, test_dbus_fuzz.py
and tests/unit/test_dbus_fixes.py).
"""

import array
import asyncio
import logging
import re
import socket
from typing import Any

from dbus_fast import DBusError, Message
from dbus_fast.__version__ import __version__ as installed_version
from dbus_fast.aio import message_bus as aio_bus
from dbus_fast.send_reply import SendReply

FAILED = "org.anklume.Live1.Error.Failed"

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
        # answering a call.
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
    # disconnect future (anklumed.main).
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
        future.exception()  # read: the loss is reported once, by anklumed.main


def _exit(self: Any, exc_type: Any, exc_value: Any, tb: Any) -> bool:
    """Upstream's ``SendReply._exit``, but an exception that is not a
    DBusError is answered without its traceback."""
    if exc_value is None:
        return False
    if isinstance(exc_value, DBusError):
        self(exc_value._as_message(self._msg))
        return True
    if isinstance(exc_value, Exception):
        _log_bug(self._msg, exc_value)
        self(Message.new_error(self._msg, FAILED,
                               f"{self._msg.member} failed inside anklumed"))
        return True
    # The call's task is cancelled only as anklumed ends (asyncio.run cancels
    # what is left): no answer, the bus tells the caller that we went. Raised
    # on, it left this reply callback, and asyncio logged it as "Exception in
    # callback" with a traceback. KeyboardInterrupt is not an answer either.
    return isinstance(exc_value, asyncio.CancelledError)


def _log_bug(msg: Message, e: BaseException) -> None:
    _log_unexpected(f"answering {msg.member}", e)


def _log_unexpected(what: str, e: BaseException) -> None:
    from anklumed.service.boundary import UNEXPECTED  # not at import: it imports this module
    UNEXPECTED.log("dbus-fast", logging.ERROR, "%s failed unexpectedly", what, exc_info=e)


def _future_exception_no_reply(self: Any, fut: Any) -> None:
    """Upstream's end of a call whose caller asked for no answer, but a
    refusal (a DBusError: the boundary logged it, rate-limited) is not logged
    again with its traceback, and anything else is logged as a bug is,
    rate-limited."""
    self._pending_futures.discard(fut)
    if fut.cancelled():
        return
    error = fut.exception()
    if error is not None and not isinstance(error, DBusError):
        _log_unexpected("a call without an answer", error)


def version_tuple(version: str) -> tuple[int, ...]:
    """"2.44.1" → (2, 44, 1); a suffix (".post1", "rc1") is ignored."""
    parts = []
    for part in version.split(".")[:3]:
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def apply() -> None:
    # The package's own __version__, not importlib.metadata: that import alone
    # cost every anklumectl call 0.35 s in the TCG guests.
    version = version_tuple(installed_version)
    if not OLDEST <= version < (NEXT_MAJOR,):
        raise RuntimeError(
            f"dbus-fast {installed_version} is outside the tested range "
            f">={'.'.join(map(str, OLDEST))},<{NEXT_MAJOR}: "
            "review anklumed/service/dbus_fixes.py"
        )
    aio_bus._MessageWriter.write_callback = _write_callback  # type: ignore[method-assign]
    aio_bus.MessageBus._reply_handler = _reply_handler  # type: ignore[method-assign]
    SendReply._exit = _exit  # type: ignore[method-assign]
    aio_bus.MessageBus._future_exception_no_reply = (  # type: ignore[method-assign]
        _future_exception_no_reply)


apply()
