"""The ESP's boot menu kept in step with PERSIST (docs/boot-chain.md).

PERSIST decides and the ESP follows: after every change of the primary the
entries are rewritten for it; marking a boot good renews the default
entry's counter; at start, a default entry with no tries left while the
other slot booted is a rollback the boot loader made alone, and PERSIST
records it. Each runs inside a PERSIST transaction, after PERSIST's own
writes; an ESP that cannot be written never undoes them (logged, and
compared again at the next start).

The desktops the menu offers are those of the running system's image
(``/usr/share/anklume/desktops``, written by the image builder): a slot
updated to an image with other desktops gets them at its first boot's
rewrite; until then an entry of a desktop it lacks starts its default one
(``anklume-session`` says so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from anklumed.errors import AnklumeError
from anklumed.persist import PersistDir
from anklumed.slots import boot_entries, model
from anklumed.slots.esp import Esp
from anklumed.stick import EFI_LABEL, BootStick, SlotName, partuuid

log = logging.getLogger(__name__)
DESKTOPS_FILE = Path("/usr/share/anklume/desktops")
BOOT_LOADER_REASON = "boot-loader"  # last-rollback's REASON for a rollback systemd-boot made


class BootMenu:
    def __init__(self, stick: Callable[[], BootStick | None],
                 desktops_file: Path = DESKTOPS_FILE) -> None:
        self.stick = stick
        self.desktops_file = desktops_file

    def desktops(self) -> tuple[str, ...]:
        try:
            return boot_entries.read_desktops(self.desktops_file.read_text())
        except FileNotFoundError:
            return ()  # a console-only image
        except (OSError, UnicodeDecodeError) as e:
            log.error("%s cannot be read (%s): the boot menu offers no other desktop",
                      self.desktops_file, e)
            return ()

    def _esp(self) -> _EspLook | None:
        """The ESP, this stick's PERSIST PARTUUID and the slots with a kernel
        on it, when the stick boots its slots' own kernels (an ESP without
        them is not ours to manage)."""
        stick = self.stick()
        if stick is None:
            return None
        efi = stick.partitions.get(EFI_LABEL)
        if efi is None or efi.device is None or stick.persist.device is None:
            return None
        esp = Esp(efi.device)
        kernels = esp.slots_with_kernel()
        if not kernels:
            return None
        uuid = partuuid(stick.persist.device)
        return _EspLook(esp, uuid, frozenset(kernels)) if uuid else None

    def follow(self, pdir: PersistDir, renew: bool = False) -> None:
        """Rewrite the entries for what PERSIST says; ``renew``: the boot was
        marked good, the default entry's counter starts again."""
        try:
            found = self._esp()
            entries = found.esp.entries() if found is not None else []
        except AnklumeError as e:
            log.error("the boot menu on the ESP was not updated: %s (compared again at the "
                      "next start)", e)
            return
        if found is not None:
            self._follow(pdir, found, entries, renew)

    def _follow(self, pdir: PersistDir, found: _EspLook, entries: list[str],
                renew: bool) -> None:
        try:
            state = model.read_slots_state(pdir)
            wanted = boot_entries.menu(state, set(found.kernels), found.persist_partuuid,
                                       self.desktops(), found.esp.slots_with_profiles(
                                           found.kernels))
            found.esp.apply(boot_entries.plan(entries, wanted, keep_counter=not renew))
        except AnklumeError as e:
            log.error("the boot menu on the ESP was not updated: %s (compared again at the "
                      "next start)", e)

    def follow_at_start(self, pdir: PersistDir, primary: SlotName, booted: SlotName | None,
                        boot_loader_gave_up: Callable[[], None]) -> None:
        """The start's look at the ESP: a default entry with no tries left
        while the other slot booted is a rollback the boot loader made alone
        (``boot_loader_gave_up`` records it on PERSIST, which leaves the ESP
        as it was), then the entries follow PERSIST. One look serves both:
        each read of the ESP is an mtools or blkid process, which a slow
        machine (a USB 2 stick, QEMU without KVM) pays at every boot."""
        try:
            found = self._esp()
            entries = found.esp.entries() if found is not None else []
        except AnklumeError as e:
            log.error("the boot menu on the ESP cannot be read: %s", e)
            return
        if found is None:
            return
        if boot_entries.fell_back(primary, booted, entries):
            boot_loader_gave_up()
        self._follow(pdir, found, entries, renew=False)


@dataclass(frozen=True)
class _EspLook:
    """What the menu read of the ESP and the stick (BootMenu._esp)."""

    esp: Esp
    persist_partuuid: str
    kernels: frozenset[SlotName]
