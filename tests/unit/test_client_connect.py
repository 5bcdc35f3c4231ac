"""A bus that cannot be reached is one ClientError, never a traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from anklume_client import ClientError, Connection
from anklume_client.errors import UNREACHABLE, USAGE


def test_a_missing_bus_socket_is_unreachable(tmp_path: Path) -> None:
    # dbus-fast opens the socket while building the MessageBus, before connect().
    with pytest.raises(ClientError) as got:
        asyncio.run(Connection.connect(f"unix:path={tmp_path}/no-such-socket"))
    assert got.value.name == UNREACHABLE
    assert "cannot reach the system bus" in got.value.message


def test_a_bad_address_is_a_usage_error() -> None:
    with pytest.raises(ClientError) as got:
        asyncio.run(Connection.connect("not-an-address"))
    assert got.value.name == USAGE
