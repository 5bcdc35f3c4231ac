"""Fixes for dbus-next 0.2.3, applied once at import.

1. The socket writer. Upstream ``_MessageWriter.write_callback`` treats
``EAGAIN`` from a full socket buffer as fatal and drops the whole bus
connection: with many clients asking at once
(tests/service/test_robustness.py::test_fifty_concurrent_clients) the daemon
lost the bus. This copy of the method differs only in waiting for the
socket to become writable again.

2. Error replies. Upstream sends them from inside ``with send_reply:``, whose
``SendReply.__exit__`` forgets to return what ``_exit`` decided: the error,
already sent, is raised again and logged with its traceback, by asyncio for
an async method ("Exception in callback": 1,000 refused calls from ``nobody``
wrote 11,000 lines) and by ``_on_message`` for the Properties and
Introspectable handlers (a Get of an unknown property from anyone). This
copy returns it; what gets logged of a refusal is decided at the boundary
(boundary.to_dbus_error).

dbus-next is pinned in pyproject.toml; on an upgrade, check whether these are
still needed (tests/service/test_robustness.py, test_bus_boundary.py and
test_dbus_fuzz.py).
"""

import array
import logging
import socket
from typing import Any

from dbus_next import DBusError, Message, MessageFlag
from dbus_next.__version__ import __version__ as installed_version
from dbus_next.aio import message_bus as aio_bus
from dbus_next.message_bus import BaseMessageBus

FAILED = "org.anklume.Live1.Error.Failed"

EXPECTED_VERSION = "0.2.3"


def _write_callback(self: Any) -> None:
    try:
        while True:
            if self.buf is None:
                if self.messages.qsize() == 0:
                    self.loop.remove_writer(self.fd)
                    return
                buf, unix_fds, fut = self.messages.get_nowait()
                self.unix_fds = unix_fds
                self.buf = memoryview(buf)
                self.offset = 0
                self.fut = fut
            try:
                if self.unix_fds and self.negotiate_unix_fd:
                    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", self.unix_fds))]
                    self.offset += self.sock.sendmsg([self.buf[self.offset:]], ancdata)
                    self.unix_fds = None
                else:
                    self.offset += self.sock.send(self.buf[self.offset:])
            except (BlockingIOError, InterruptedError):
                return  # the loop calls us again once the socket is writable
            if self.offset >= len(self.buf):
                self.buf = None
                aio_bus._future_set_result(self.fut, None)
            else:
                return
    except Exception as e:
        aio_bus._future_set_exception(self.fut, e)
        self.bus._finalize(e)


def _send_reply(self: Any, msg: Message) -> Any:
    """Upstream's SendReply, whose ``__exit__`` returns what ``_exit`` decided,
    and which answers an exception that is not a DBusError without its
    traceback."""
    bus = self

    class SendReply:
        def __enter__(self) -> "SendReply":
            return self

        def __call__(self, reply: Message) -> None:
            if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
                return
            bus.send(reply)

        def _exit(self, exc_type: Any, exc_value: Any, tb: Any) -> bool:
            if exc_type is None:
                return False
            if issubclass(exc_type, DBusError):
                self(exc_value._as_message(msg))
                return True
            if issubclass(exc_type, Exception):
                _log_bug(msg, exc_value)
                self(Message.new_error(msg, FAILED, f"{msg.member} failed inside anklumed"))
                return True
            return False

        def __exit__(self, exc_type: Any, exc_value: Any, tb: Any) -> bool:
            return self._exit(exc_type, exc_value, tb)

        def send_error(self, exc: BaseException) -> None:
            self._exit(exc.__class__, exc, exc.__traceback__)

    return SendReply()


def _log_bug(msg: Message, e: BaseException) -> None:
    from anklumed.service.boundary import UNEXPECTED  # not at import: it imports this module
    UNEXPECTED.log("dbus-next", logging.ERROR, "answering %s failed unexpectedly", msg.member,
                   exc_info=e)


def apply() -> None:
    # The package's own __version__, not importlib.metadata: that import alone
    # cost every anklumectl call 0.35 s in the TCG guests.
    if installed_version != EXPECTED_VERSION:
        raise RuntimeError(
            f"dbus-next {installed_version} is not the pinned {EXPECTED_VERSION}: "
            "review anklumed/service/dbus_next_fixes.py"
        )
    aio_bus._MessageWriter.write_callback = _write_callback
    BaseMessageBus._send_reply = _send_reply


apply()
