"""Authorization of callers: uid 0 is trusted, everyone else asks polkit.

The subject is the caller's ``system-bus-name`` (polkit then finds its uid,
session and process itself, race-free). The caller's
allow-interactive-authorization flag is passed on, so ``anklumectl`` run from a
terminal gets a password prompt from its polkit agent. When polkit cannot be
reached, nobody but root may change anything.
"""

import asyncio
import itertools
import logging

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from anklumed.errors import NotAuthorized
from anklumed.service.boundary import Caller, RateLimitedLog

log = logging.getLogger(__name__)
# Any caller can make the daemon ask polkit as often as it likes.
UNAVAILABLE = RateLimitedLog(log, "polkit failures", burst=3, period=60.0)

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 0x1
BUS_TIMEOUT = 10.0
# An interactive check waits for a person to type a password.
INTERACTIVE_TIMEOUT = 300.0
NONINTERACTIVE_TIMEOUT = 25.0

ACTION_UPDATE = "org.anklume.live1.update"
ACTION_SWITCH_SLOT = "org.anklume.live1.switch-slot"
ACTION_DATA_SETUP = "org.anklume.live1.data-setup"
ACTION_DATA_UNLOCK = "org.anklume.live1.data-unlock"
ACTION_DATA_LOCK = "org.anklume.live1.data-lock"


async def call(bus: MessageBus, msg: Message, limit: float = BUS_TIMEOUT) -> Message:
    """``bus.call`` has no timeout of its own. The bus lost during the call
    is a ConnectionError, as an OSError for every caller: dbus-fast hands the
    call its reader's EOFError, which is none."""
    try:
        reply = await asyncio.wait_for(bus.call(msg), limit)
    except EOFError:
        raise ConnectionError("the system bus connection was lost") from None
    assert reply is not None  # a method call without NO_REPLY_EXPECTED always has one
    return reply


class Authority:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._ids = itertools.count(1)

    async def caller_uid(self, sender: str) -> int:
        reply = await call(
            self.bus,
            Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
                    signature="s", body=[sender]),
        )
        if reply.message_type != MessageType.METHOD_RETURN:
            raise NotAuthorized("the identity of the caller could not be established")
        uid: int = reply.body[0]
        return uid

    async def check(self, action: str, caller: Caller) -> None:
        """Return if ``caller`` may perform ``action``; raise NotAuthorized otherwise."""
        try:
            await self._check(action, caller)
        except OSError as e:  # the bus lost: main() ends the daemon; one line, no traceback
            raise NotAuthorized(f"the authorization could not be asked ({e}); "
                                "nothing was changed") from None

    async def _check(self, action: str, caller: Caller) -> None:
        uid = await self.caller_uid(caller.sender)
        if uid == 0:
            return
        cancel_id = f"anklumed-{next(self._ids)}"
        flags = ALLOW_USER_INTERACTION if caller.interactive else 0
        msg = Message(
            destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_IFACE,
            member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
            body=[["system-bus-name", {"name": Variant("s", caller.sender)}], action, {},
                  flags, cancel_id],
        )
        timeout = INTERACTIVE_TIMEOUT if caller.interactive else NONINTERACTIVE_TIMEOUT
        try:
            reply = await call(self.bus, msg, timeout)
        except TimeoutError:
            await self._cancel(cancel_id)
            raise NotAuthorized("authorization timed out; nothing was changed") from None
        if reply.message_type != MessageType.METHOD_RETURN:
            UNAVAILABLE.log("polkit", logging.WARNING,
                            "polkit unavailable (%s): only root may change anything",
                            reply.error_name)
            raise NotAuthorized(
                "polkit is not available to authorize this, so only root may do it"
            )
        authorized, challenge, _details = reply.body[0]
        if authorized:  # a denial is logged once, rate-limited, by the boundary
            log.info("polkit allowed uid %d %s", uid, action)
            return
        if challenge:
            raise NotAuthorized(
                "this needs an administrator's password; run it from a desktop session or "
                "a terminal with a polkit agent (anklumectl asks for it when interactive)"
            )
        raise NotAuthorized("you are not allowed to do this")

    async def _cancel(self, cancel_id: str) -> None:
        msg = Message(destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_IFACE,
                      member="CancelCheckAuthorization", signature="s", body=[cancel_id])
        try:
            await call(self.bus, msg)
        except (TimeoutError, OSError):
            log.debug("could not cancel polkit check %s", cancel_id)
