"""What anklumed asks of systemd (PID 1) over the system bus."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from anklumed.service.polkit import call

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
PROPS = "org.freedesktop.DBus.Properties"
MISSED_SIGNAL_NET = 30  # seconds: when_active reads the state again after this


class Systemd:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def _call(self, path: str, iface: str, member: str, sig: str = "",
                    body: list[object] | None = None) -> list[object]:
        reply = await call(self.bus, Message(destination=SYSTEMD, path=path, interface=iface,
                                             member=member, signature=sig, body=body or []))
        if reply.message_type != MessageType.METHOD_RETURN:
            raise OSError(f"systemd {member}: {reply.error_name}")
        return list(reply.body)

    async def available(self) -> bool:
        """Whether systemd is on this bus. A call that was not answered in
        time says nothing (PID 1 busy at boot): TimeoutError, for the caller
        to ask again."""
        try:
            await self._call(SYSTEMD_PATH, PROPS, "Get", "ss", [MANAGER, "Version"])
        except TimeoutError:  # before OSError: it is one
            raise
        except OSError:  # an error answer (no such name on the bus), or the bus lost
            return False
        return True

    async def _active_state(self, path: str) -> str:
        value = (await self._call(path, PROPS, "Get", "ss", [UNIT, "ActiveState"]))[0]
        assert isinstance(value, Variant)
        return str(value.value)

    async def when_active(self, unit: str, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` once ``unit`` is active (now or later)."""
        path = str((await self._call(SYSTEMD_PATH, MANAGER, "LoadUnit", "s", [unit]))[0])
        changed = asyncio.Event()

        def on_signal(msg: Message) -> None:
            if msg.message_type == MessageType.SIGNAL and msg.path == path:
                changed.set()

        self.bus.add_message_handler(on_signal)
        rule = f"type='signal',sender='{SYSTEMD}',path='{path}',interface='{PROPS}'"
        try:  # from here: a timeout (the caller asks again) leaves no handler behind
            await call(self.bus, Message(destination="org.freedesktop.DBus",
                                         path="/org/freedesktop/DBus",
                                         interface="org.freedesktop.DBus", member="AddMatch",
                                         signature="s", body=[rule]))
            while True:
                changed.clear()  # before the read: a change during it wakes the wait
                if await self._active_state(path) == "active":
                    break
                # The timeout is a safety net in case a signal is missed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), MISSED_SIGNAL_NET)
        finally:
            self.bus.remove_message_handler(on_signal)
        await action()

    async def waiting_jobs(self) -> list[str]:
        """Units systemd is still starting: why the boot has not completed."""
        jobs = (await self._call(SYSTEMD_PATH, MANAGER, "ListJobs"))[0]
        assert isinstance(jobs, list)
        return sorted(f"{job[1]} ({job[3]})" for job in jobs)

    async def reboot(self) -> None:
        await self._call(SYSTEMD_PATH, MANAGER, "StartUnit", "ss",
                         ["reboot.target", "replace-irreversibly"])
