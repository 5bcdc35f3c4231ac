"""Typed proxies for anklumed's objects: Manager, Slot, DataDisk, Job.

Methods take their D-Bus signatures from interface.py (checked against the
XML), so a renamed or retyped method fails a test, not a user. Properties
are read whole (GetAll, answered from memory by the daemon) and completed
for a daemon of another revision (properties.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from anklume_client.connection import Connection
from anklume_client.interface import (
    DATA_DISK,
    DATA_PATH,
    JOB,
    JOB_PREFIX,
    MANAGER,
    ROOT_PATH,
    SLOT,
    SLOT_PREFIX,
    Interface,
)
from anklume_client.models import DataDiskStatus, JobStatus, ManagerStatus, SlotInfo
from anklume_client.properties import Properties, complete

Changed = Callable[[Properties], None]


class Proxy:
    interface: Interface

    def __init__(self, conn: Connection, path: str) -> None:
        self.conn = conn
        self.path = path

    async def properties(self) -> Properties:
        return complete(self.interface, await self.conn.get_all(self.path, self.interface.name))

    async def invoke(self, member: str, *args: Any, mutating: bool = True,
                     unix_fds: list[int] | None = None) -> Any:
        """Call ``member`` with the signature the interface gives it; its one
        value, or None for a method without one."""
        in_sig, out_sig = self.interface.methods[member]
        reply = await self.conn.call(self.path, self.interface.name, member, in_sig,
                                     list(args), mutating=mutating, unix_fds=unix_fds)
        return reply[0] if out_sig else None

    async def subscribe(self, on_change: Changed) -> Callable[[], None]:
        """``on_change`` with the whole, updated properties on each
        PropertiesChanged; the first call comes at once, with the state read
        after subscribing (so no change falls between)."""
        current: dict[str, Any] = {}
        read: list[int] = []  # the serial of the first read, once it is in
        early: list[tuple[int, dict[str, Any]]] = []

        def changed(values: dict[str, Any], serial: int) -> None:
            if not read:  # a change alone is not the state: wait for the read
                early.append((serial, values))
                return
            current.update(values)
            on_change(complete(self.interface, current))

        undo = await self.conn.subscribe_properties(self.path, self.interface.name, changed)
        try:
            values, serial = await self.conn.get_all_serial(self.path, self.interface.name)
        except BaseException:
            undo()
            raise
        current.update(values)
        for later in (v for s, v in early if s > serial):  # sent after the reply
            current.update(later)
        read.append(serial)
        on_change(complete(self.interface, current))
        return undo


class Manager(Proxy):
    interface = MANAGER

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn, ROOT_PATH)

    async def status(self) -> ManagerStatus:
        return ManagerStatus.from_properties(await self.properties())

    async def slots(self) -> dict[str, Properties]:
        """Both slots' properties by name, in one call (ObjectManager)."""
        (managed,) = await self.conn.call(ROOT_PATH, "org.freedesktop.DBus.ObjectManager",
                                          "GetManagedObjects")
        return {props["Name"]: props for props in (
            complete(SLOT, ifaces[SLOT.name]) for _path, ifaces in sorted(managed.items())
            if SLOT.name in ifaces)}

    async def update(self, source: str, verify_hash: str, allow_downgrade: bool) -> Job:
        return Job(self.conn, await self.invoke("Update", source, verify_hash, allow_downgrade))

    async def update_from_files(self, options: dict[str, Any], fds: list[int]) -> Job:
        """``fds[0]`` the manifest; ``h`` options are indices into ``fds``."""
        return Job(self.conn, await self.invoke("UpdateFromFiles", 0, options, unix_fds=fds))

    async def mark_good(self) -> None:
        await self.invoke("MarkGood")

    async def rollback(self, force: bool) -> str:
        return str(await self.invoke("Rollback", force))

    async def set_primary(self, slot: str, force: bool) -> None:
        await self.invoke("SetPrimary", slot, force)

    async def mark_bad(self, slot: str) -> None:
        await self.invoke("MarkBad", slot)


class Slot(Proxy):
    interface = SLOT

    def __init__(self, conn: Connection, name: str) -> None:
        super().__init__(conn, SLOT_PREFIX + name)

    async def info(self) -> SlotInfo:
        return SlotInfo.from_properties(await self.properties())


class DataDisk(Proxy):
    interface = DATA_DISK

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn, DATA_PATH)

    async def status(self) -> DataDiskStatus:
        return DataDiskStatus.from_properties(await self.properties())

    async def setup(self, disk: str, pool: str, backend: str, encryption: str,
                    passphrase: bytes) -> Job:
        return Job(self.conn, await self.invoke("Setup", disk, pool, backend, encryption,
                                                passphrase))

    async def adopt(self, disk: str, passphrase: bytes) -> Job:
        return Job(self.conn, await self.invoke("Adopt", disk, passphrase))

    async def unlock(self, passphrase: bytes) -> Job:
        return Job(self.conn, await self.invoke("Unlock", passphrase))

    async def lock(self, stop_incus: bool) -> Job:
        return Job(self.conn, await self.invoke("Lock", stop_incus))

    async def change_passphrase(self, current: bytes, new: bytes) -> None:
        await self.invoke("ChangePassphrase", current, new)

    async def add_recovery_key(self, current: bytes) -> bytes:
        return bytes(await self.invoke("AddRecoveryKey", current))

    async def refresh(self) -> None:
        await self.invoke("Refresh", mutating=False)


class Job(Proxy):
    interface = JOB

    @property
    def number(self) -> str:
        return self.path.removeprefix(JOB_PREFIX)

    async def status(self) -> JobStatus:
        return JobStatus.from_properties(self.path, await self.properties())

    async def cancel(self) -> bool:
        return bool(await self.invoke("Cancel"))

    async def follow(self, on_progress: Callable[[JobStatus], None] | None = None
                     ) -> JobStatus:
        """Wait for the job to end, by its signals (PropertiesChanged for the
        progress, Finished for the end), never by polling; its final status.
        A bus or a daemon that goes away meanwhile is a ClientError
        (Disconnected)."""
        from anklume_client.connection import lost

        done: asyncio.Future[JobStatus] = asyncio.get_running_loop().create_future()

        def changed(props: Properties) -> None:
            status = JobStatus.from_properties(self.path, props)
            if on_progress is not None and not status.finished:
                on_progress(status)
            if status.finished and not done.done():
                done.set_result(status)

        died: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        undo_died = await self.conn.watch_gone(
            lambda: None if died.done() else died.set_result(None))
        undos = [undo_died]
        try:
            undos.append(await self.conn.subscribe(
                self.path, JOB.name, "Finished",
                lambda msg: None if done.done() else done.set_result(self._ended(msg.body))))
            undos.append(await self.subscribe(changed))
            gone: asyncio.Future[None] = asyncio.ensure_future(self.conn.disconnected())
            try:
                waited: list[asyncio.Future[Any]] = [done, gone, died]
                await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not done.done():
                raise lost()
            return done.result()
        finally:
            for undo in reversed(undos):
                undo()

    def _ended(self, body: list[Any]) -> JobStatus:
        """The status a Finished signal says (state, full error name, message)."""
        state, error, message = (str(v) for v in body)
        short = error.rsplit(".", 1)[-1] if error else ""
        props = complete(JOB, {"State": state, "ErrorName": short, "Message": message})
        return JobStatus.from_properties(self.path, props)
