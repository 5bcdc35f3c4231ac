"""FAKE anklumed of another revision, for anklumectl's tolerance tests.

A few lines of dbus-fast answering GetAll and GetManagedObjects with the
revision-1 interface (the members of dbus/org.anklume.Live1.xml that
revision 2 did not add), minus the properties named by ``--lack``; every
other method call is taken and never answered, so a test can break the bus
or the daemon during a call. Job 1 is an update that runs and never ends,
so a test can break them while it is followed. It prints ``ready`` once it
owns the name, ``call NAME`` when a call arrives, and ``job read`` when
job 1's properties were read.

python -m tests.service.older_daemon ADDRESS [--lack Property ...]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from anklume_client.interface import BUS_NAME, DATA_DISK, DATA_PATH, JOB, MANAGER, ROOT_PATH, SLOT
from anklume_client.interface import Interface as Known
from anklume_client.properties import empty

VALUES: dict[str, dict[str, Any]] = {
    MANAGER.name: {"Version": "0.0.9", "BootedSlot": "A", "PrimarySlot": "A",
                   "BootCount": 1, "BootAttempts": 3, "BootState": "pending",
                   "StateReasons": [], "Problems": ["hand-off: TORAM='maybe' is not yes/no"],
                   "Toram": "no", "RootInRam": "no", "Verity": "signed",
                   "MemoryEncryption": "unsupported",
                   "Partitions": [["ANKLUME-OS-A", 2, 1 << 30, "/dev/sdy2"]]},
    SLOT.name: {"Name": "A", "Status": "ok", "Version": "0.0.9", "Booted": True,
                "Primary": True},
    DATA_DISK.name: {"State": "absent", "DisksProbed": True,
                     "Candidates": [["sdz", "/dev/sdz", "Old Disk", 64 << 30, "usb", "S1",
                                     "gpt partition table", "sdz1 is mounted"]]},
    JOB.name: {"Kind": "update", "State": "running", "Phase": "writing", "Cancellable": True},
}
JOB_1 = f"{ROOT_PATH}/job/1"


def revision_1(iface: Known, lack: set[str]) -> dict[str, Variant]:
    props = {}
    for name, signature in iface.properties.items():
        if name in iface.added or name in lack:
            continue
        props[name] = Variant(signature, VALUES[iface.name].get(name, empty(signature)))
    return props


def answer(msg: Message, lack: set[str], bus: MessageBus) -> Message | bool:
    if msg.message_type != MessageType.METHOD_CALL:
        return False
    if msg.member == "GetAll" and msg.path == JOB_1 and msg.body[0] == JOB.name:
        # Said once the reply is on the bus: killed after that, the daemon
        # leaves a caller that has its answer and follows the job.
        sent = bus.send(Message.new_method_return(msg, "a{sv}", [revision_1(JOB, lack)]))
        sent.add_done_callback(lambda _: print("job read", flush=True))
        return True
    if msg.member == "GetAll":
        iface = {MANAGER.name: MANAGER, DATA_DISK.name: DATA_DISK}.get(msg.body[0])
        if iface is None or msg.path not in (ROOT_PATH, DATA_PATH):
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownInterface",
                                     "no such interface")
        return Message.new_method_return(msg, "a{sv}", [revision_1(iface, lack)])
    if msg.member == "GetManagedObjects":
        slots = {f"{ROOT_PATH}/slot/A": {SLOT.name: revision_1(SLOT, lack)}}
        return Message.new_method_return(msg, "a{oa{sa{sv}}}", [slots])
    print(f"call {msg.member}", flush=True)
    return True  # taken, never answered


async def serve(address: str, lack: set[str]) -> None:
    bus = await MessageBus(bus_address=address).connect()
    bus.add_message_handler(lambda msg: answer(msg, lack, bus))
    await bus.request_name(BUS_NAME)
    print("ready", flush=True)
    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--lack", nargs="*", default=[])
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.address, set(args.lack)))
    except (EOFError, OSError):  # the test killed the bus
        sys.exit(0)
