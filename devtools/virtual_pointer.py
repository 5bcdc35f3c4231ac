"""Click somewhere on a wlroots compositor, as a person with a mouse would:
a minimal Wayland client (the wire protocol by hand, no library) that creates
a zwlr_virtual_pointer_v1 and sends one absolute move and one click. The
desktop tier's pointer (Debian 12 has no wlrctl). By hand rather than
pywayland (a cffi build against libwayland, and the wlr protocol's XML to
generate from) or a C client (wayland-scanner and a compiler in setup-dev):
four requests of a stable wire format, in the standard library.

  python -m devtools.virtual_pointer X Y WIDTH HEIGHT [left|right]
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from pathlib import Path

BUTTONS = {"left": 0x110, "right": 0x111}  # linux/input-event-codes.h


class Wayland:
    def __init__(self) -> None:
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / os.environ.get("WAYLAND_DISPLAY",
                                                                      "wayland-0")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.next_id = 2
        self.buffer = b""

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def send(self, obj: int, opcode: int, args: bytes = b"") -> None:
        self.sock.sendall(struct.pack("<IHH", obj, opcode, 8 + len(args)) + args)

    def events(self) -> list[tuple[int, int, bytes]]:
        """Read until a sync's callback fires: every event before it."""
        done = self.new_id()
        self.send(1, 0, struct.pack("<I", done))  # wl_display.sync
        found: list[tuple[int, int, bytes]] = []
        while True:
            while len(self.buffer) < 8 or len(self.buffer) < struct.unpack_from(
                    "<IHH", self.buffer)[2]:
                self.buffer += self.sock.recv(65536)
            obj, opcode, size = struct.unpack_from("<IHH", self.buffer)
            body, self.buffer = self.buffer[8:size], self.buffer[size:]
            if obj == done:
                return found
            found.append((obj, opcode, body))


def now() -> int:
    """An event's time in milliseconds. Each event's own: GTK subtracts a
    press's from its release's, unsigned, and closes a menu whose release
    seems to come 4294967295 ms late."""
    return int(time.monotonic() * 1000) & 0xFFFFFFFF


def string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<I", len(raw)) + raw + b"\0" * (-len(raw) % 4)


def globals_of(wl: Wayland, registry: int) -> dict[str, tuple[int, int]]:
    found = {}
    for obj, opcode, body in wl.events():
        if obj == registry and opcode == 0:  # wl_registry.global
            name, length = struct.unpack_from("<II", body)
            interface = body[8:8 + length - 1].decode()
            found[interface] = (name, struct.unpack_from("<I", body, 8 + length + (-length % 4))[0])
    return found


def click(x: int, y: int, width: int, height: int, button: str) -> None:
    wl = Wayland()
    registry = wl.new_id()
    wl.send(1, 1, struct.pack("<I", registry))  # wl_display.get_registry
    found = globals_of(wl, registry)
    seat, manager = wl.new_id(), wl.new_id()
    for obj, interface, version in ((seat, "wl_seat", 1),
                                    (manager, "zwlr_virtual_pointer_manager_v1", 1)):
        if interface not in found:
            raise SystemExit(f"the compositor has no {interface}")
        wl.send(registry, 0, struct.pack("<I", found[interface][0]) + string(interface)
                + struct.pack("<II", version, obj))  # wl_registry.bind
    pointer = wl.new_id()
    wl.send(manager, 0, struct.pack("<II", seat, pointer))  # create_virtual_pointer
    wl.events()
    wl.send(pointer, 1, struct.pack("<IIIII", now(), x, y, width, height))  # motion_absolute
    wl.send(pointer, 4)  # frame
    wl.events()
    time.sleep(0.2)  # the client under the pointer gets its enter first
    for state in (1, 0):
        wl.send(pointer, 2, struct.pack("<III", now(), BUTTONS[button],
                                        state))  # button
        wl.send(pointer, 4)
        wl.events()
        time.sleep(0.05)
    time.sleep(0.3)  # keep the device until the client handled the release


if __name__ == "__main__":
    x, y, w, h = (int(v) for v in sys.argv[1:5])
    click(x, y, w, h, sys.argv[5] if len(sys.argv) > 5 else "left")
