"""Guest side of the control channel: ask the host to plug or pull a disk.

Used by VM-tier tests (through the ``vm_disks`` fixture) to hot-plug a fresh
disk or to pull one while it is in use, the way a hand at the USB port would.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

from devtools.slowness import scaled

PORT_NAME = "anklume.ctl"
RUNDIR = Path("/anklume-vm")


def _port() -> Path:
    for name in Path("/sys/class/virtio-ports").glob("*/name"):
        if name.read_text().strip() == PORT_NAME:
            return Path("/dev") / name.parent.name
    raise RuntimeError("no anklume.ctl port: not running in the test guest?")


def request(line: str, timeout: float = 30.0) -> None:
    fd = os.open(_port(), os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, line.encode() + b"\n")
        reply = b""
        deadline = time.monotonic() + scaled(timeout)
        while not reply.endswith(b"\n"):
            # Wait for the answer with the time left: a read alone would
            # block past the deadline if the host never answered.
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError(f"the host did not answer {line!r}")
            reply += os.read(fd, 4096)
    finally:
        os.close(fd)
    text = reply.decode().strip()
    if text != "ok":
        raise RuntimeError(f"host refused {line!r}: {text}")


def disk_serial(block: Path) -> str | None:
    """virtio-blk shows the serial on the disk; USB storage on its USB device."""
    if (block / "serial").exists():
        return (block / "serial").read_text().strip()
    node = (block / "device").resolve()
    while node != Path("/sys/devices") and node != node.parent:
        if (node / "serial").exists():
            return (node / "serial").read_text().strip()
        node = node.parent
    return None


def find_disk(serial: str) -> Path | None:
    for block in Path("/sys/block").iterdir():
        if disk_serial(block) == serial:
            return Path("/dev") / block.name
    return None


def wait_disk(serial: str, present: bool = True, timeout: float = 30.0) -> Path | None:
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        dev = find_disk(serial)
        if (dev is not None) == present and (dev is None or dev.exists()):
            return dev
        time.sleep(0.1)
    raise TimeoutError(f"disk {serial} did not {'appear' if present else 'go away'}")


def plug(serial: str, bus: str = "usb", size: int | None = None,
         image: Path | None = None) -> Path:
    """Plug a new disk: a blank one of ``size`` bytes, or ``image`` (in RUNDIR)."""
    if image is not None:
        spec = f"file={image.resolve().relative_to(RUNDIR)}"
    elif size is not None:
        spec = f"size={size}"
    else:
        raise ValueError("give a size or an image")
    request(f"plug {serial} {bus} {spec}")
    dev = wait_disk(serial)
    assert dev is not None
    return dev


def unplug(serial: str) -> None:
    request(f"unplug {serial}")
    wait_disk(serial, present=False)
