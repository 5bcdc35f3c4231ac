"""Desktop tier: headless sway + waybar + mako as an ordinary user (nobody),
the tray and the guide as that user, the real anklumed of the simulation on
its private system bus (root: loop devices)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from anklume_client.connection import unwrap
from devtools.desktop_session import DesktopSession
from devtools.slowness import scaled
from tests.service.conftest import sim  # noqa: F401 - the simulation, as a fixture

pytestmark = pytest.mark.desktop
TOOLS = ("sway", "waybar", "mako", "makoctl", "grim", "dbus-daemon")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/desktop" in str(item.fspath):
            item.add_marker(pytest.mark.desktop)


@pytest.fixture
def session() -> Iterator[DesktopSession]:
    if os.geteuid() != 0:
        pytest.fail("the desktop tier needs root: the simulation's loop devices (the "
                    "session itself runs as nobody)")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run ./setup-dev --tests")
    # Not under tmp_path: pytest's directory is root's alone, and the session's
    # user must reach its runtime directory.
    workdir = Path(tempfile.mkdtemp(prefix="anklume-desktop-"))
    workdir.chmod(0o755)
    s = DesktopSession(workdir)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def session_call(session: DesktopSession, dest: str, path: str, iface: str, member: str,
                 signature: str = "", body: list[Any] | None = None) -> Any:
    """One call on the session's bus, as its host or a bar would make it."""
    async def call() -> Any:
        bus = await MessageBus(bus_address=session.bus_address).connect()
        try:
            reply = await asyncio.wait_for(bus.call(Message(
                destination=dest, path=path, interface=iface, member=member,
                signature=signature, body=body or [])), scaled(10))
        finally:
            bus.disconnect()
            with contextlib.suppress(Exception):  # the reader's EOF on our own hang-up
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{reply.error_name}: {reply.body}")
        values = [unwrap(v) for v in reply.body]
        return values if len(values) > 1 else values[0] if values else None
    return asyncio.run(call())
