"""The boot stick: which disk holds the ANKLUME-* partitions, and where they are.

Partition names are read from the GPT itself (anklumed.gpt, read-only), because
the kernel may not expose them (this happens without udevd, and on kernels that
parse no partition tables and get partitions only from ``partx -a``). Partition numbers
are then mapped to block devices through sysfs with pyudev, which needs no udevd.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path

import pyudev
from pydantic import BaseModel, ConfigDict

from anklumed.command import CommandError, run
from anklumed.errors import ErrorCode, Failed, NotFound
from anklumed.gpt import read_gpt

log = logging.getLogger(__name__)


class SlotName(StrEnum):
    A = "A"
    B = "B"

    @property
    def other(self) -> SlotName:
        return SlotName.B if self is SlotName.A else SlotName.A

    @property
    def label(self) -> str:
        return f"ANKLUME-OS-{self.value}"

    @classmethod
    def parse(cls, text: str) -> SlotName | None:
        """The slot ``text`` names, or None: the one reading of a slot name
        everywhere (ab-state, last-rollback, the hand-off, the kernel command
        line, D-Bus arguments, anklumectl).

        Exactly one letter, either case: what ``slot_name`` in
        initramfs/anklume-state.sh accepts, so both sides read a hand-edited
        file alike. Whitespace is not ignored here: a caller trims what its
        format trims (ab-state as a whole file is stripped; a KEY=value line
        is, by parse_kv; a quoted " a" is not, in the shell either). Nothing
        else ("AB", " a", "slot A", "") names a slot."""
        return _SLOT_SPELLINGS.get(text)


_SLOT_SPELLINGS = {"A": SlotName.A, "a": SlotName.A, "B": SlotName.B, "b": SlotName.B}
EFI_LABEL = "ANKLUME-EFI"
PERSIST_LABEL = "ANKLUME-PERSIST"
LABELS = (EFI_LABEL, SlotName.A.label, SlotName.B.label, PERSIST_LABEL)


class Partition(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    number: int
    size: int  # bytes
    device: Path | None  # None when the kernel has no block device for it


class BootStick(BaseModel):
    model_config = ConfigDict(frozen=True)

    disk: Path
    size: int
    partitions: dict[str, Partition]

    def partition(self, label: str) -> Partition:
        try:
            return self.partitions[label]
        except KeyError:
            raise NotFound(f"the boot stick {self.disk} has no {label} partition") from None

    def slot(self, slot: SlotName) -> Partition:
        return self.partition(slot.label)

    @property
    def persist(self) -> Partition:
        return self.partition(PERSIST_LABEL)


class AmbiguousStick(Failed):
    """Several disks carry ANKLUME-* partitions and nothing says which one booted."""

    default_code = ErrorCode.AMBIGUOUS_STICK


def _partition_devices(context: pyudev.Context, disk: Path) -> dict[int, Path]:
    """Map partition numbers of ``disk`` to their block devices (through sysfs)."""
    try:
        parent = pyudev.Devices.from_device_file(context, str(disk))
    except (pyudev.DeviceNotFoundError, OSError, ValueError):
        return {}
    found: dict[int, Path] = {}
    for child in context.list_devices(subsystem="block", DEVTYPE="partition", parent=parent):
        try:
            number = int(child.attributes.asstring("partition"))
        except (KeyError, ValueError):
            continue
        if child.device_node:
            found[number] = Path(child.device_node)
    return found


def read_stick(disk: Path, context: pyudev.Context | None = None) -> BootStick | None:
    """Read ``disk`` as a boot stick; None if it carries no ANKLUME-PERSIST partition."""
    gpt = read_gpt(disk)
    if gpt is None:
        return None
    size, parts = gpt
    devices = _partition_devices(context or pyudev.Context(), disk)
    partitions = {
        name: Partition(label=name, number=number, size=psize, device=devices.get(number))
        for number, name, psize in parts
        if name in LABELS
    }
    if PERSIST_LABEL not in partitions:
        return None
    return BootStick(disk=disk, size=size, partitions=partitions)


def candidate_disks(context: pyudev.Context) -> list[Path]:
    """Whole disks worth probing: non-empty, not RAM disks."""
    disks = []
    for dev in context.list_devices(subsystem="block", DEVTYPE="disk"):
        name = dev.sys_name
        if name.startswith(("ram", "zram", "dm-", "md", "sr")) or not dev.device_node:
            continue
        try:
            if int(dev.attributes.asstring("size")) == 0:
                continue
        except (KeyError, ValueError):
            continue
        disks.append(Path(dev.device_node))
    return disks


def partuuid(device: Path) -> str | None:
    """The GPT unique GUID of a partition device, lower case; None if unknown."""
    try:
        out = run(["blkid", "-p", "-o", "value", "-s", "PART_ENTRY_UUID", device], timeout=10)
    except CommandError:
        return None
    value = out.stdout.decode().strip().lower()
    return value or None


def discover(
    hint_disk: Path | None = None,
    persist_partuuid: str | None = None,
    context: pyudev.Context | None = None,
) -> BootStick:
    """Find the boot stick.

    ``hint_disk`` (from the hand-off or the disk under ``/``) is tried first.
    Otherwise every disk is probed. When the hand-off names the PERSIST
    PARTUUID, only that stick is ever taken: another anklume stick plugged in
    after the boot one was pulled must not receive this system's state.
    Without it, several sticks are refused rather than guessed between.
    """
    context = context or pyudev.Context()
    wanted = persist_partuuid.lower() if persist_partuuid else None

    def ours(stick: BootStick) -> bool:
        return wanted is None or _persist_partuuid(stick) == wanted

    if hint_disk is not None:
        stick = read_stick(hint_disk, context)
        if stick is not None and ours(stick):
            return stick
        log.warning("%s holds no ANKLUME-PERSIST partition%s; scanning all disks", hint_disk,
                    "" if stick is None else " of the stick this system booted from")
    sticks = [s for d in candidate_disks(context) if (s := read_stick(d, context))]
    names = ", ".join(str(s.disk) for s in sticks)
    if wanted is not None:
        matching = [s for s in sticks if ours(s)]
        if len(matching) == 1:
            return matching[0]
        if not matching:
            others = f" ({names} is another anklume stick)" if sticks else ""
            raise NotFound(f"the boot stick (PERSIST PARTUUID {wanted}) is not plugged in"
                           f"{others}; plug it back in")
        sticks = matching  # copies of one stick, made with dd: refuse to guess below
        names = ", ".join(str(s.disk) for s in sticks)
    if not sticks:
        raise NotFound("no disk with an ANKLUME-PERSIST partition was found; is the stick plugged?")
    if len(sticks) > 1:
        raise AmbiguousStick(
            f"several disks carry ANKLUME partitions ({names}) and the boot hand-off does "
            "not say which one booted; unplug the sticks that are not in use"
        )
    return sticks[0]


def _persist_partuuid(stick: BootStick) -> str | None:
    device = stick.persist.device
    return partuuid(device) if device else None
