"""A fix for dbus-next 0.2.3's socket writer, applied once at import.

Upstream ``_MessageWriter.write_callback`` treats ``EAGAIN`` from a full socket
buffer as fatal and drops the whole bus connection: with many clients asking at
once (tests/service/test_robustness.py::test_fifty_concurrent_clients) the
daemon lost the bus. This copy of the method differs only in waiting for the
socket to become writable again. dbus-next is pinned in pyproject.toml; on an
upgrade, check whether this is still needed.
"""

import array
import socket
from typing import Any

from dbus_next.__version__ import __version__ as installed_version
from dbus_next.aio import message_bus as aio_bus

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


def apply() -> None:
    # The package's own __version__, not importlib.metadata: that import alone
    # cost every anklumectl call 0.35 s in the TCG guests.
    if installed_version != EXPECTED_VERSION:
        raise RuntimeError(
            f"dbus-next {installed_version} is not the pinned {EXPECTED_VERSION}: "
            "review anklumed/service/dbus_next_fixes.py"
        )
    aio_bus._MessageWriter.write_callback = _write_callback


apply()
