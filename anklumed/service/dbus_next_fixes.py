"""Fixes for dbus-next 0.2.3, applied once at import.

1. The socket writer. Upstream ``_MessageWriter.write_callback`` treats
``EAGAIN`` from a full socket buffer as fatal and drops the whole bus
connection: with many clients asking at once
(tests/service/test_robustness.py::test_fifty_concurrent_clients) the daemon
lost the bus. This copy of the method differs only in waiting for the
socket to become writable again.

2. The reply to an async method. Upstream's ``done`` callback sends the
error reply from inside ``with send_reply:``, whose ``__exit__`` forgets to
return True: the DBusError then escapes into asyncio, which logs "Exception in
callback" with a traceback for every refused call (1,000 refused calls from
``nobody`` wrote 11,000 lines). This copy builds the reply itself and sends
it once; what gets logged is decided at the boundary (boundary.to_dbus_error).

dbus-next is pinned in pyproject.toml; on an upgrade, check whether these are
still needed (tests/service/test_robustness.py and test_bus_boundary.py).
"""

import array
import asyncio
import logging
import socket
from typing import Any

from dbus_next import DBusError, Message
from dbus_next.__version__ import __version__ as installed_version
from dbus_next.aio import message_bus as aio_bus
from dbus_next.message_bus import BaseMessageBus
from dbus_next.service import ServiceInterface

log = logging.getLogger(__name__)
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


def _make_method_handler(self: Any, interface: Any, method: Any) -> Any:
    if not asyncio.iscoroutinefunction(method.fn):
        return BaseMessageBus._make_method_handler(self, interface, method)

    def handler(msg: Message, send_reply: Any) -> None:
        def done(fut: "asyncio.Future[Any]") -> None:
            try:
                send_reply(_reply(msg, method, fut))
            except Exception as e:  # the bus is gone: nobody to answer
                log.debug("cannot answer %s: %s", msg.member, e)

        args = ServiceInterface._msg_body_to_args(msg)
        fut = asyncio.ensure_future(method.fn(interface, *args))
        fut.add_done_callback(done)

    return handler


def _reply(msg: Message, method: Any, fut: "asyncio.Future[Any]") -> Message:
    """The reply to ``msg`` once its method is done, never a traceback."""
    try:
        body, unix_fds = ServiceInterface._fn_result_to_body(fut.result(),
                                                             method.out_signature_tree)
        return Message.new_method_return(msg, method.out_signature, body, unix_fds)
    except DBusError as e:  # the boundary already translated and logged it
        return e._as_message(msg)
    except asyncio.CancelledError:
        return Message.new_error(msg, FAILED, "anklumed is stopping; try again")
    except Exception:  # a return value that does not fit: a bug of the daemon
        log.exception("the reply to %s does not fit its signature", msg.member)
        return Message.new_error(msg, FAILED, f"{msg.member} failed inside anklumed")


def apply() -> None:
    # The package's own __version__, not importlib.metadata: that import alone
    # cost every anklumectl call 0.35 s in the TCG guests.
    if installed_version != EXPECTED_VERSION:
        raise RuntimeError(
            f"dbus-next {installed_version} is not the pinned {EXPECTED_VERSION}: "
            "review anklumed/service/dbus_next_fixes.py"
        )
    aio_bus._MessageWriter.write_callback = _write_callback
    aio_bus.MessageBus._make_method_handler = _make_method_handler


apply()
