"""Which disks could hold the user's data, and why the others may not.

A disk is described from sysfs (through pyudev, which also works without
udevd) and probed read-only with blkid for what it holds now: a partition
table, filesystems, LUKS, a ZFS label. It is refused -- never offered, and
refused by name with RefusedBootDevice if asked for -- when it is the boot
stick (any ANKLUME-* partition, or the disk the system booted from), when a
partition of it is mounted or held (LVM, dm-crypt, md, swap), when it is
read-only, or when it is too small to be worth encrypting.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pyudev

from anklumed.command import CommandError, run
from anklumed.errors import ErrorCode, NotFound, RefusedBootDevice
from anklumed.gpt import read_gpt

log = logging.getLogger(__name__)
MIN_SIZE = 256 * 1024 * 1024
_SKIPPED_PREFIXES = ("ram", "zram", "dm-", "md", "sr", "nbd", "fd")


class Refusal(StrEnum):
    """Why a disk may not hold the data, as a stable word (a candidate's
    ``refused_code`` on the bus; docs/dbus.md "Codes")."""

    BOOT_STICK = "boot-stick"
    HOLDS_SYSTEM = "holds-system"
    MOUNTED = "mounted"
    HELD = "held"
    READ_ONLY = "read-only"
    TOO_SMALL = "too-small"

    @property
    def error_code(self) -> ErrorCode:
        """The job error when the disk is asked for all the same."""
        return _REFUSAL_ERRORS[self]


_REFUSAL_ERRORS = {
    Refusal.BOOT_STICK: ErrorCode.DISK_IS_BOOT_STICK,
    Refusal.HOLDS_SYSTEM: ErrorCode.DISK_HOLDS_SYSTEM,
    Refusal.MOUNTED: ErrorCode.DISK_MOUNTED,
    Refusal.HELD: ErrorCode.DISK_HELD,
    Refusal.READ_ONLY: ErrorCode.DISK_READ_ONLY,
    Refusal.TOO_SMALL: ErrorCode.DISK_TOO_SMALL,
}


@dataclass
class Disk:
    name: str  # kernel name: sda, vdb, nvme0n1, loop3
    device: Path
    size: int
    model: str = ""
    serial: str = ""
    bus: str = ""  # usb, ata, nvme, virtio, scsi, loop...
    by_id: str = ""  # a stable /dev/disk/by-id/ name when udev made one
    contents: list[str] = field(default_factory=list)  # what blkid saw, for people
    fstype: str = ""  # on the whole disk: crypto_LUKS, btrfs, zfs_member...
    label: str = ""
    refused: str = ""  # why it may not be used; empty if it may
    refused_code: Refusal | None = None  # the same as a word

    @property
    def usable(self) -> bool:
        return not self.refused


def _attribute(device: pyudev.Device, name: str) -> str:
    try:
        return str(device.attributes.asstring(name)).strip()
    except (KeyError, UnicodeDecodeError):
        return ""


def _bus(device: pyudev.Device) -> str:
    if device.sys_name.startswith("loop"):
        return "loop"
    bus = device.properties.get("ID_BUS", "")
    if bus:
        return str(bus)
    path = device.sys_path
    for marker, name in (("/usb", "usb"), ("/nvme", "nvme"), ("/virtio", "virtio"),
                         ("/ata", "ata")):
        if marker in path:
            return name
    return "scsi" if "/host" in path else ""


def _serial(device: pyudev.Device) -> str:
    """The disk's serial: from udev, the disk's own attribute, or its USB device."""
    serial = device.properties.get("ID_SERIAL_SHORT") or _attribute(device, "serial")
    parent = device.parent
    while not serial and parent is not None:
        if parent.subsystem == "usb" and parent.device_type == "usb_device":
            serial = _attribute(parent, "serial")
            break
        parent = parent.parent
    return str(serial or "")


def _model(device: pyudev.Device) -> str:
    model = device.properties.get("ID_MODEL") or _attribute(device, "device/model")
    vendor = _attribute(device, "device/vendor")
    return " ".join(part for part in (vendor, str(model or "").replace("_", " ")) if part)


def _by_id(device: pyudev.Device) -> str:
    links = [link for link in device.device_links if link.startswith("/dev/disk/by-id/")]
    return sorted(links, key=len)[0] if links else ""


def _mounted_devices() -> set[str]:
    """Kernel names of block devices with a mounted filesystem or active swap."""
    names: set[str] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        source = line.split(" - ", 1)[1].split()[1] if " - " in line else ""
        if source.startswith("/dev/"):
            names.add(Path(os.path.realpath(source)).name)
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        names.add(Path(os.path.realpath(line.split()[0])).name)
    return names


def blkid(device: Path) -> dict[str, str]:
    """blkid's low-level probe of ``device`` (never mounting), as KEY: value."""
    try:
        out = run(["blkid", "-p", "-o", "export", device], timeout=15, check=False)
    except CommandError:
        return {}
    return dict(line.split("=", 1) for line in out.stdout.decode(errors="replace")
                .splitlines() if "=" in line)


def probe(device: Path, values: dict[str, str] | None = None) -> list[str]:
    """What is on a disk or partition, in words for people."""
    values = blkid(device) if values is None else values
    found = []
    if values.get("PTTYPE"):
        found.append(f"{values['PTTYPE']} partition table")
    if values.get("TYPE"):
        label = f" '{values['LABEL']}'" if values.get("LABEL") else ""
        found.append(f"{values['TYPE']}{label}")
    return found


def _loop_offered(device: pyudev.Device, allow_loop: bool, loops_under: Path | None) -> bool:
    """A loop device is a disk only where allowed (the simulation, tests);
    with ``loops_under``, only one whose image file is under it."""
    if not allow_loop or loops_under is None:
        return allow_loop
    image = _attribute(device, "loop/backing_file")
    return bool(image) and Path(image).is_relative_to(loops_under)


def _describe(device: pyudev.Device, mounted: set[str], boot_disks: set[str],
              allow_loop: bool, loops_under: Path | None = None) -> Disk | None:
    name = device.sys_name
    if name.startswith(_SKIPPED_PREFIXES) or not device.device_node:
        return None
    try:
        size = int(_attribute(device, "size") or 0) * 512
    except ValueError:
        return None
    if size == 0 or (name.startswith("loop")
                     and not _loop_offered(device, allow_loop, loops_under)):
        return None
    disk = Disk(name=name, device=Path(device.device_node), size=size, model=_model(device),
                serial=_serial(device), bus=_bus(device), by_id=_by_id(device))
    partitions = [child for child in device.children
                  if child.subsystem == "block" and child.device_type == "partition"]
    values = blkid(disk.device)
    disk.contents = probe(disk.device, values)
    disk.fstype, disk.label = values.get("TYPE", ""), values.get("LABEL", "")
    for part in partitions:
        disk.contents += [f"{part.sys_name}: {what}" for what in probe(Path(part.device_node))]
    refusal = _refusal(device, disk, partitions, mounted, boot_disks)
    if refusal is not None:
        disk.refused_code, disk.refused = refusal
    return disk


def _refusal(device: pyudev.Device, disk: Disk, partitions: list[pyudev.Device],
             mounted: set[str], boot_disks: set[str]) -> tuple[Refusal, str] | None:
    names = {disk.name, *(p.sys_name for p in partitions)}
    if _has_anklume_partitions(disk.device):
        return Refusal.BOOT_STICK, "it is the boot stick (it holds ANKLUME partitions)"
    if disk.name in boot_disks:
        return Refusal.HOLDS_SYSTEM, "the running system lives on it"
    in_use = sorted(names & mounted)
    if in_use:
        return Refusal.MOUNTED, f"{', '.join(in_use)} is mounted"
    held = sorted(n for n in names if any((Path("/sys/class/block") / n / "holders").glob("*")))
    if held:
        return Refusal.HELD, (f"{', '.join(held)} is in use by the kernel "
                              "(device-mapper, RAID or LVM)")
    if _attribute(device, "ro") == "1":
        return Refusal.READ_ONLY, "it is read-only"
    if disk.size < MIN_SIZE:
        return Refusal.TOO_SMALL, f"it is too small ({disk.size // (1024 * 1024)} MiB)"
    return None


def _has_anklume_partitions(device: Path) -> bool:
    gpt = read_gpt(device)
    return gpt is not None and any(name.startswith("ANKLUME-") for _, name, _ in gpt[1])


def list_disks(boot_disks: set[str], allow_loop: bool = False,
               context: pyudev.Context | None = None,
               loops_under: Path | None = None) -> list[Disk]:
    """Every whole disk, usable or not (each refused one says why)."""
    context = context or pyudev.Context()
    mounted = _mounted_devices()
    disks = []
    for device in context.list_devices(subsystem="block", DEVTYPE="disk"):
        described = _describe(device, mounted, boot_disks, allow_loop, loops_under)
        if described is not None:
            disks.append(described)
    return sorted(disks, key=lambda d: d.name)


def choose(path: str, boot_disks: set[str], allow_loop: bool = False) -> Disk:
    """The disk ``path`` names (/dev/sdb, sdb or a by-id link) if it may hold data."""
    wanted = Path(os.path.realpath(path if path.startswith("/") else f"/dev/{path}")).name
    for disk in list_disks(boot_disks, allow_loop=True):
        if disk.name != wanted:
            continue
        if disk.name.startswith("loop") and not allow_loop:
            raise RefusedBootDevice(f"{path} is a loop device, not a disk",
                                    code=ErrorCode.DISK_IS_LOOP)
        if disk.refused_code is not None:
            raise RefusedBootDevice(f"{path} cannot hold the data: {disk.refused}",
                                    code=disk.refused_code.error_code)
        return disk
    raise NotFound(f"no disk {path}")
