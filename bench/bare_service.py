"""bench.daemon's reference: a dbus-fast service that only takes anklumed's
bus name on the system bus (DBUS_SYSTEM_BUS_ADDRESS) and waits.

  python -m bench.bare_service

What any dbus-fast daemon pays before it does anything: the interpreter,
dbus-fast's import, a connection, a name.
"""

import asyncio

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

BUS_NAME = "org.anklume.Live1"


async def main() -> None:
    bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(), 10)
    await asyncio.wait_for(bus.request_name(BUS_NAME), 10)
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    asyncio.run(main())
