"""The notifications: which the state calls for (pure), remembered per boot so
a login does not announce again what an earlier one did, and sent to
``org.freedesktop.Notifications``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from anklume_desktop.atomic import write_atomic
from anklume_desktop.daemon import BootState, DataDisk, DataState, JobState, Status

log = logging.getLogger(__name__)
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
REBOOT = "reboot"  # the action of "update finished"


@dataclass(frozen=True)
class Notice:
    key: str  # announced once per boot
    summary: str
    body: str
    critical: bool = False
    actions: tuple[tuple[str, str], ...] = ()  # (action id, label)


def notices(status: Status, data: DataDisk) -> list[Notice]:
    """Every notice this state calls for (the memory drops those already made)."""
    found = []
    if status.boot_state == BootState.ROLLED_BACK:
        found.append(Notice("rolled-back", "The previous system was restored",
                            "An update failed to start three times; anklume went back "
                            "to the system that worked.", critical=True))
    if status.boot_state == BootState.DEGRADED:
        found.append(Notice("degraded", "The system is degraded",
                            "\n".join(status.reasons) or "See 'anklumectl status'.",
                            critical=True))
    if status.safe_to_remove and status.root_in_ram:
        found.append(Notice("safe-to-remove", "The USB stick can be safely removed",
                            "The system runs from memory."))
    if data.pulled:
        found.append(Notice("pulled", "The data disk was unplugged",
                            "Plug it back in: its writes are held until then.", critical=True))
    if data.state == DataState.LOCKED and data.attempts_left == 0:
        found.append(Notice("unlock-paused", "Unlocking is paused",
                            "Too many wrong passphrases: wait 30 seconds and try again."))
    job, state = status.last_update_job, status.last_update_state
    if job and state == JobState.SUCCEEDED:
        found.append(Notice(f"update-{job}", "The update is ready",
                            "It starts at the next boot.", actions=((REBOOT, "Reboot now"),)))
    elif job and state in (JobState.FAILED, JobState.CANCELLED):
        found.append(Notice(f"update-{job}", "The update did not finish",
                            status.last_update_message or "See 'anklumectl jobs'.",
                            critical=state == JobState.FAILED))
    return found


# Conditions that may come back within a boot: announced again when they do.
REPEATABLE = ("pulled", "unlock-paused")


class Memory:
    """The keys announced this boot, in a file named after the boot's id.

    A notice is remembered once a notification daemon took it (announced),
    not when it is first wanted: one that could not be sent (no daemon yet at
    login, under Plasma its shell takes the name late) is sent when one comes."""

    def __init__(self, directory: Path, boot_id: str | None = None) -> None:
        self.path = directory / f"announced-{boot_id or BOOT_ID.read_text().strip()}"
        self.keys = set(self.path.read_text().split()) if self.path.exists() else set()

    def fresh(self, wanted: list[Notice]) -> list[Notice]:
        """Those not yet announced; forgets a repeatable one once it is over."""
        now = {n.key for n in wanted}
        gone = {k for k in REPEATABLE if k in self.keys and k not in now}
        if gone:
            self.keys -= gone
            self._save()
        return [n for n in wanted if n.key not in self.keys]

    def announced(self, notice: Notice) -> None:
        self.keys.add(notice.key)
        self._save()

    def _save(self) -> None:
        for old in self.path.parent.glob("announced-*"):  # earlier boots
            if old != self.path and not old.name.endswith(".tmp"):
                old.unlink(missing_ok=True)
        write_atomic(self.path, "\n".join(sorted(self.keys)) + "\n")


NOTIFICATIONS = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH = "/org/freedesktop/Notifications"
BUS = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
# Seconds for the daemon's answer, after which the notice counts as taken:
# the bus queued it to the name's owner, which answers late when busy
# (Plasma's shell loading its panel at login under TCG).
ANSWER_WAIT = 10.0


class Notifier:
    """Sends notices to the session's notification daemon; ``on_action(action_id)``
    when the person picks an action, ``on_daemon()`` when a daemon takes the
    name (what could not be sent before can be now).

    It never starts a daemon (no D-Bus activation): each desktop starts its own
    (sway's and labwc's files start mako, Plasma's shell is its own), and an
    image with several desktops has more than one activation file for the name
    (mako's, Plasma's waiter), of which dbus-daemon picks one: the tray's
    first notice under Plasma started mako, which then kept the name from
    Plasma's shell (the desktops tier saw it)."""

    def __init__(self, bus: MessageBus, on_action: Callable[[str], None],
                 on_daemon: Callable[[], None] = lambda: None) -> None:
        self.bus = bus
        self.on_action = on_action
        self.on_daemon = on_daemon
        self.sent: dict[int, Notice] = {}
        self.daemon = ""  # the name's owner (a unique name); "" while none
        self.answer_wait = ANSWER_WAIT

    async def start(self) -> None:
        self.bus.add_message_handler(self._signal)
        for rule in (f"type='signal',interface='{NOTIFICATIONS}',member='ActionInvoked'",
                     f"type='signal',sender='{BUS}',interface='{BUS}',"
                     f"member='NameOwnerChanged',arg0='{NOTIFICATIONS}'"):
            await self.bus.call(Message(destination=BUS, path=BUS_PATH, interface=BUS,
                                        member="AddMatch", signature="s", body=[rule]))
        # Asked after subscribing: an owner that comes in between is not missed.
        reply = await self.bus.call(Message(destination=BUS, path=BUS_PATH, interface=BUS,
                                            member="GetNameOwner", signature="s",
                                            body=[NOTIFICATIONS]))
        if reply is not None and reply.message_type == MessageType.METHOD_RETURN \
                and not self.daemon:
            self.daemon = str(reply.body[0])

    async def send(self, notice: Notice) -> bool:
        """Whether the session's daemon took the notice: it answered, or it
        has it and answers late (its id, for the actions, is kept when it
        comes). False when no daemon runs (on_daemon says when to try again)
        or it refused the notice; the tray icon still says the state."""
        if not self.daemon:
            log.info("notifications: no daemon yet; %r waits", notice.summary)
            return False
        actions: list[str] = [part for action in notice.actions for part in action]
        hints: dict[str, Any] = {"urgency": Variant("y", 2 if notice.critical else 1),
                                 "desktop-entry": Variant("s", "anklume-tray")}
        call = asyncio.ensure_future(self.bus.call(Message(
            destination=NOTIFICATIONS, path=NOTIFICATIONS_PATH, interface=NOTIFICATIONS,
            member="Notify", signature="susssasa{sv}i", flags=MessageFlag.NO_AUTOSTART,
            body=["anklume", 0, "anklume-live", notice.summary, notice.body, actions,
                  hints, -1])))
        call.add_done_callback(lambda done: self._answered(done, notice))
        try:
            reply = await asyncio.wait_for(asyncio.shield(call), self.answer_wait)
        except TimeoutError:
            log.info("notifications: %r sent, the daemon has not answered yet", notice.summary)
            return True
        return reply is not None and reply.message_type == MessageType.METHOD_RETURN

    def _answered(self, call: asyncio.Future[Message | None], notice: Notice) -> None:
        if call.cancelled() or call.exception() is not None:
            log.info("notifications: %r not sent: %s", notice.summary,
                     "cancelled" if call.cancelled() else call.exception())
            return
        reply = call.result()
        if reply is not None and reply.message_type == MessageType.METHOD_RETURN:
            self.sent[int(reply.body[0])] = notice
        else:
            log.info("notifications: %r refused: %s", notice.summary,
                     reply.error_name if reply is not None else "no reply")

    def _signal(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        if msg.member == "ActionInvoked" and msg.interface == NOTIFICATIONS \
                and int(msg.body[0]) in self.sent:
            self.on_action(str(msg.body[1]))
        elif msg.member == "NameOwnerChanged" and msg.sender == BUS \
                and msg.body[0] == NOTIFICATIONS:
            self.daemon = str(msg.body[2])
            if self.daemon:
                log.info("notifications: a daemon took the name (%s)", self.daemon)
                self.on_daemon()
