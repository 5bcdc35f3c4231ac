"""The ESP's boot menu as the slots' state implies it (docs/boot-chain.md).

Pure: which files the ESP should hold for a primary slot and the slots that
have a kernel, and how systemd-boot's counter reads in an entry's name. The
image builder writes these entries first; anklumed rewrites them when the
primary changes and resets the counter when it marks a boot good.

Entry files name the slot whose UKI they boot, so a change of primary is
new files, then old ones deleted: no file is ever rewritten in place on FAT.
The default entry carries systemd-boot's counter, fixed-width and
pre-initialised (``+3-0``), so that systemd-boot's own rename keeps the
name's length (uapi-group/specifications#168).

An image with several desktops (``anklume-image build --desktop all``)
boots its first one from the default entry; each other desktop gets an entry
of the primary slot that asks for it (``anklume.desktop=NAME``, read by
``anklume-session``), uncounted like every entry only a person picks.

The command lines are also in the UKI: one systemd-stub profile per kind of
entry (``profiles``), each with its own ``.cmdline``, and an entry names
its profile first (``@N``). Under Secure Boot systemd-stub boots the
profile's command line and drops the entry's (the entries are unsigned
files); without it, the entry's options (the same words, plus what only
the stick knows: PERSIST's PARTUUID, the kernel's slot) are used as
before. A UKI made before the profiles has none: its entries carry no
``@N`` (systemd-stub refuses a profile it does not have).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from anklumed.slots.model import SlotsState, SlotStatus
from anklumed.stick import SlotName

ENTRIES_DIR = "loader/entries"
UKI_DIR = "EFI/anklume"
UKI_IN_IMAGE = "usr/lib/anklume/boot/uki.efi"  # where a slot's squashfs carries its UKI
MAX_TRIES = 9  # one digit: the counter's rename never changes the name's length
PANIC_REBOOT_S = 10  # a panicking kernel reboots and spends a try, instead of hanging
LOADER_CONF = "timeout 3\neditor no\n"  # no `default`: the first entry in sort order boots

_DESKTOP = re.compile(r"^[a-z][a-z0-9]{0,15}$")  # goes into entry file names
_COUNTED = re.compile(r"^anklume-1-live-([ab])\+([0-9])-([0-9])\.conf$")


def uki_path(slot: SlotName) -> str:
    return f"{UKI_DIR}/slot-{slot.value.lower()}.efi"


def uki_temporary(slot: SlotName) -> str:
    """Where a slot's new UKI is written before it takes the UKI's name: a
    name no entry refers to, so a half-written one is never booted."""
    return f"{UKI_DIR}/slot-{slot.value.lower()}.new"


@dataclass(frozen=True)
class Counter:
    """systemd-boot's ``+LEFT-DONE``: tries left, tries done since the reset."""

    left: int
    done: int

    @property
    def exhausted(self) -> bool:
        return self.left == 0


@dataclass(frozen=True)
class DefaultEntry:
    """The counted default entry found on the ESP."""

    name: str
    slot: SlotName
    counter: Counter


def parse_default(name: str) -> DefaultEntry | None:
    """The default entry's slot and counter from its file name (None: not one)."""
    match = _COUNTED.match(name.lower())
    if match is None:
        return None
    slot = SlotName(match[1].upper())
    return DefaultEntry(name, slot, Counter(int(match[2]), int(match[3])))


def tries(attempts: int) -> int:
    """The counter's start: PERSIST's boot-attempts, within one digit."""
    return max(1, min(attempts, MAX_TRIES))


def default_name(slot: SlotName, attempts: int) -> str:
    return f"anklume-1-live-{slot.value.lower()}+{tries(attempts)}-0.conf"


@dataclass(frozen=True)
class Profile:
    """One kind of entry: its words, the same on every stick and slot."""

    title: str
    options: str
    unattended: bool = False  # the boot loader picks it alone: a panic reboots

    @property
    def cmdline(self) -> str:
        """The command line the UKI carries for it (``.cmdline``)."""
        return _cmdline(self.options, self.unattended)


def _cmdline(options: str, unattended: bool) -> str:
    # The entries the boot loader picks alone reboot a panic (the kernel's,
    # or initramfs-tools' when no slot verifies) so the attempt is counted;
    # those only a person picks keep the console and its recovery shell.
    panic = f" panic={PANIC_REBOOT_S}" if unattended else ""
    return f"boot=anklume {options}{panic} quiet"


def profiles(desktops: tuple[str, ...] = ()) -> list[Profile]:
    """The UKI's profiles, in systemd-stub's order (``@0`` first; 0 is also
    what an entry without ``@N`` boots). ``desktops``: the image's, its
    default first (it needs no profile of its own)."""
    found = [Profile("anklume Live", "anklume.toram=1", unattended=True),
             Profile("anklume Live (run from the stick)", "anklume.toram=0")]
    found += [Profile(f"anklume Live, slot {s.value}", f"anklume.slot={s.value} anklume.toram=1",
                      unattended=True) for s in SlotName]
    found += [Profile(f"anklume Live, slot {s.value} (run from the stick)",
                      f"anklume.slot={s.value} anklume.toram=0") for s in SlotName]
    for desktop in desktops[1:]:
        if not _DESKTOP.match(desktop):
            raise ValueError(f"{desktop!r} is not a desktop's name")
        found.append(Profile(f"anklume Live ({desktop})",
                             f"anklume.toram=1 anklume.desktop={desktop}"))
    return found


def _profile_index(options: str, desktops: tuple[str, ...]) -> int:
    return [p.options for p in profiles(desktops)].index(options)


def pe_sections(head: bytes) -> list[tuple[str, int, int]]:
    """(name, size, file offset) of each section of a PE file (an EFI
    program), from its first bytes (the headers and the section table: a few
    hundred bytes); [] when ``head`` is not a PE file or is cut before its
    section table."""
    try:
        (pe,) = struct.unpack_from("<I", head, 0x3C)
        if head[:2] != b"MZ" or head[pe:pe + 4] != b"PE\0\0":
            return []
        count, optional = struct.unpack_from("<H", head, pe + 6)[0], \
            struct.unpack_from("<H", head, pe + 20)[0]
        table = pe + 24 + optional
        found = []
        for at in range(table, table + 40 * count, 40):
            if len(head) < at + 40:
                return []
            name = head[at:at + 8].rstrip(b"\0").decode("ascii", "replace")
            # VirtualSize: the bytes the section holds (its raw size is padded)
            size, offset = struct.unpack_from("<I", head, at + 8)[0], \
                struct.unpack_from("<I", head, at + 20)[0]
            found.append((name, size, offset))
        return found
    except struct.error:
        return []


def pe_section_names(head: bytes) -> list[str]:
    return [name for name, _, _ in pe_sections(head)]


def profile_cmdlines(uki: bytes) -> list[str]:
    """Each profile's command line as systemd-stub takes it: the profile's own
    ``.cmdline``, else the base one (the sections before the first
    ``.profile``). [] for a UKI without profiles."""
    base: str | None = None
    found: list[str | None] = []
    for name, size, offset in pe_sections(uki):
        text = uki[offset:offset + size].rstrip(b"\0").decode(errors="replace").strip()
        if name == ".profile":
            found.append(None)
        elif name == ".cmdline" and found:
            found[-1] = text
        elif name == ".cmdline":
            base = text
    return [own if own is not None else (base or "") for own in found]


def _entry_text(sort_key: str, title: str, slot: SlotName, options: str,
                persist_partuuid: str, unattended: bool = False,
                profile: int | None = None) -> str:
    # `linux`, not systemd 258's `uki` key: Debian 13's systemd-boot is 257.
    # A UKI is an EFI program like the kernel's own stub; systemd-boot starts
    # it with the options as its command line, and counts `linux` entries.
    # ``@N`` first: systemd-stub takes it off, and boots profile N.
    words = _cmdline(f"anklume.persist=PARTUUID={persist_partuuid} "
                     f"anklume.kernel={slot.value} {options}", unattended)
    at = f"@{profile} " if profile is not None else ""
    lines = [f"title {title}", f"sort-key {sort_key}", f"linux /{uki_path(slot)}",
             f"options {at}{words}"]
    return "\n".join(lines) + "\n"


def wanted_entries(primary: SlotName, with_kernel: set[SlotName], attempts: int,
                   persist_partuuid: str, desktops: tuple[str, ...] = (),
                   profiled: set[SlotName] | None = None) -> dict[str, str]:
    """File name → content of every entry the ESP should hold.

    Order (systemd-boot's ``sort-key``): the default, the other slot (where
    the boot loader falls back once the default has no tries left), the
    default without toram, the primary forced, then the default with each
    desktop after the first (``desktops``: the image's, its default first).
    A slot without a kernel on the ESP gets no entry; neither does anything
    when the primary has none. ``profiled``: the slots whose UKI has the
    profiles (None: every one), whose entries name theirs. An entry's text
    depends only on its name, the stick and its UKI's kind; entries are
    compared by name (``plan``), so one written before its UKI had profiles
    stays as it is until its name changes (under Secure Boot it boots the
    UKI's first profile, the default's command line, until then).
    """
    if primary not in with_kernel:
        return {}
    s, t = primary, primary.other

    def _entry(sort_key: str, title: str, slot: SlotName, options: str,
               persist_partuuid: str, unattended: bool = False) -> str:
        profile = (_profile_index(options, desktops)
                   if profiled is None or slot in profiled else None)
        return _entry_text(sort_key, title, slot, options, persist_partuuid, unattended,
                           profile)

    entries = {
        default_name(s, attempts): _entry(
            "anklume-1", "anklume Live", s, "anklume.toram=1", persist_partuuid,
            unattended=True),
        f"anklume-3-stick-{s.value.lower()}.conf": _entry(
            "anklume-3", "anklume Live (run from the stick)", s, "anklume.toram=0",
            persist_partuuid),
        f"anklume-4-slot-{s.value.lower()}.conf": _entry(
            "anklume-4", f"anklume Live, slot {s.value}", s,
            f"anklume.slot={s.value} anklume.toram=0", persist_partuuid),
    }
    if t in with_kernel:
        entries[f"anklume-2-slot-{t.value.lower()}.conf"] = _entry(
            "anklume-2", f"anklume Live, slot {t.value}", t,
            f"anklume.slot={t.value} anklume.toram=1", persist_partuuid, unattended=True)
    for desktop in desktops[1:]:
        if not _DESKTOP.match(desktop):
            raise ValueError(f"{desktop!r} is not a desktop's name")
        entries[f"anklume-5-desktop-{s.value.lower()}-{desktop}.conf"] = _entry(
            f"anklume-5-{desktop}", f"anklume Live ({desktop})", s,
            f"anklume.toram=1 anklume.desktop={desktop}", persist_partuuid)
    return dict(sorted(entries.items()))


def menu(state: SlotsState, with_kernel: set[SlotName], persist_partuuid: str,
         desktops: tuple[str, ...] = (), profiled: set[SlotName] | None = None
         ) -> dict[str, str]:
    """The entries for what PERSIST says: its primary, and the other slot
    only while it is ``ok`` (the boot loader falls back to it by itself)."""
    bootable = {s for s in with_kernel
                if s is state.primary or state.meta[s].status is SlotStatus.OK}
    return wanted_entries(state.primary, bootable, state.boot_attempts, persist_partuuid,
                          desktops, profiled)


def read_desktops(text: str) -> tuple[str, ...]:
    """The image's desktops file (one name a line, its default first); a
    name that could not be an entry's is left out."""
    return tuple(name for line in text.splitlines() if _DESKTOP.match(name := line.strip()))


def fell_back(primary: SlotName, booted: SlotName | None, present: list[str]) -> bool:
    """The boot loader gave up on the primary by itself: the primary's
    default entry has no tries left and the other slot is what booted. (A
    boot that died before the initramfs never wrote PERSIST: this is how
    PERSIST learns of it.)"""
    defaults = [d for n in present if (d := parse_default(n)) is not None and d.slot is primary]
    # Of two (a renewal cut short), the one systemd-boot boots: the higher name.
    return booted is primary.other and bool(defaults) and \
        max(defaults, key=lambda d: d.name).counter.exhausted


_OURS = re.compile(r"^anklume-([1-4]-(live|slot|stick)-[ab](\+[0-9]-[0-9])?"
                   r"|5-desktop-[ab]-[a-z][a-z0-9]{0,15})\.conf$")


def is_ours(name: str) -> bool:
    """An entry file of the names anklume writes; any other (one a person
    added, say) is left alone."""
    return _OURS.match(name.lower()) is not None


@dataclass(frozen=True)
class EntryPlan:
    """How to go from the entries on the ESP to the wanted ones: write first,
    then delete, so the default entry is never missing."""

    write: dict[str, str]
    delete: list[str]

    @property
    def empty(self) -> bool:
        return not self.write and not self.delete


def plan(present: list[str], wanted: dict[str, str], keep_counter: bool) -> EntryPlan:
    """``present``: the names of our entry files on the ESP. With
    ``keep_counter`` a default entry of the wanted slot stays as it is, used
    counter included: only marking a boot good renews the counter."""
    wanted = dict(wanted)
    if keep_counter:
        for want in list(wanted):
            new = parse_default(want)
            if new is None:
                continue
            kept = [n for n in present
                    if (old := parse_default(n)) is not None and old.slot is new.slot]
            if kept:
                # Two of them (a cut between a renewal's write and delete):
                # the one systemd-boot boots, the higher name (more tries left).
                wanted[max(kept)] = wanted.pop(want)
    write = {n: text for n, text in wanted.items() if n not in present}
    delete = sorted(n for n in present if n not in wanted)
    return EntryPlan(write, delete)
