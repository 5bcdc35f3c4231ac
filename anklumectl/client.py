"""Talking to anklumed on the system bus: anklume_client's connection, plus
what only a terminal needs (a polkit agent, the logind reboot)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType

from anklume_client.connection import CALL_TIMEOUT, INTERACTIVE_TIMEOUT, Connection, unwrap
from anklume_client.errors import ClientError
from anklume_client.interface import BUS_NAME, MANAGER, ROOT_PATH, SLOT
from anklume_client.proxies import Manager

MANAGER_IFACE = MANAGER.name
SLOT_IFACE = SLOT.name
__all__ = ["BUS_NAME", "CALL_TIMEOUT", "INTERACTIVE_TIMEOUT", "MANAGER_IFACE", "ROOT_PATH",
           "SLOT_IFACE", "Client", "ClientError", "polkit_agent", "unwrap"]


@contextlib.contextmanager
def polkit_agent(enabled: bool) -> Iterator[None]:
    """Like systemctl: a text-mode polkit agent for this terminal, unless one runs."""
    agent = shutil.which("pkttyagent")
    if not enabled or agent is None or os.geteuid() == 0 or not sys.stdin.isatty():
        yield
        return
    read, write = os.pipe()
    proc = subprocess.Popen([agent, "--notify-fd", str(write), "--fallback"], pass_fds=(write,))
    os.close(write)
    with os.fdopen(read) as ready:
        ready.read(1)  # pkttyagent closes the fd once it is registered
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(5)


class Client(Connection):
    @property
    def managed(self) -> Manager:
        return Manager(self)

    async def status(self) -> dict[str, Any]:
        """The manager's properties, with the slots' under "Slots" (two calls at once)."""
        props, slots = await asyncio.gather(self.managed.properties(), self.managed.slots())
        return {**props, "Slots": slots}

    async def reboot(self) -> None:
        """Through logind, which asks polkit as any desktop would."""
        flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if self.interactive else \
            MessageFlag.NONE
        msg = Message(destination="org.freedesktop.login1", path="/org/freedesktop/login1",
                      interface="org.freedesktop.login1.Manager", member="Reboot",
                      signature="b", body=[self.interactive], flags=flags)
        reply = await self._send(msg, INTERACTIVE_TIMEOUT)
        if reply.message_type == MessageType.ERROR:
            raise ClientError(reply.error_name or "", str(reply.body[0] if reply.body else ""))

    async def manager(self, member: str, signature: str = "", *body: Any) -> list[Any]:
        return await self.call(ROOT_PATH, MANAGER_IFACE, member, signature, list(body),
                               mutating=True)
