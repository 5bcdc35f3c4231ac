"""The daemon's fixes for dbus-fast 2.x, applied once at import, after the
ones every connection gets (anklume_client/dbus_fixes.py: 1, the socket
writer; 2, the calls pending when the bus goes away), which this module
applies first. Fixes 3 and 4 concern only a side that answers calls, and
only anklumed does: they stay out of the clients.

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

The version they were checked against is anklume_client/dbus_fixes.py's: on a
major upgrade of dbus-fast, check whether these are still needed
(tests/service/test_robustness.py, test_bus_boundary.py, test_dbus_fuzz.py
and tests/unit/test_dbus_fixes.py).
"""

import asyncio
import logging
from typing import Any

from dbus_fast import DBusError, Message
from dbus_fast.aio import message_bus as aio_bus
from dbus_fast.send_reply import SendReply

from anklume_client import dbus_fixes as client_fixes
from anklumed.errors import Failed

FAILED = "org.anklume.Live1.Error.Failed"


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


def apply() -> None:
    """All four, or Failed (one line in the journal: anklumed.main) on a
    dbus-fast they were not checked against."""
    why = client_fixes.refusal()
    if why is not None:
        raise Failed(f"anklumed cannot start: {why}")
    client_fixes.apply()
    SendReply._exit = _exit  # type: ignore[method-assign]
    aio_bus.MessageBus._future_exception_no_reply = (  # type: ignore[method-assign]
        _future_exception_no_reply)


apply()
