"""What PERSIST says about the slots: ab-state, boot-count, slot meta, last rollback.

Parsing is lenient and validation strict: each bad value becomes a problem
(reported to the user) and a safe default, never an exception. The defaults are
the ones the initramfs applies, so both sides agree on what a damaged file means.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from anklumed.errors import AnklumeError
from anklumed.persist import (
    MAX_FILE_BYTES,
    TMP_SUFFIX,
    FileTooLarge,
    PersistDir,
    decode,
    format_kv,
    parse_kv,
)
from anklumed.stick import SlotName
from anklumed.timestamps import format_time, parse_time

AB_STATE = "ab-state"
BOOT_COUNT = "boot-count"
BOOT_ATTEMPTS = "boot-attempts"
LAST_ROLLBACK = "last-rollback"
DEFAULT_SLOT = SlotName.A
DEFAULT_ATTEMPTS = 3
MAX_ATTEMPTS = 100
MAX_BOOT_COUNT = 9999  # a larger count is garbage, not a real number of boots
MAX_SIZE = (1 << 63) - 1  # what the bus publishes (uint64) with room to spare
MAX_BLOCK_SIZE = 1 << 20  # dm-verity blocks are a page; 1 MiB is already absurd


T = TypeVar("T")


def meta_file(slot: SlotName) -> str:
    return f"slots/{slot.value}.meta"


def verity_file(slot: SlotName) -> str:
    return f"slots/{slot.value}.verity"


def manifest_file(slot: SlotName) -> str:
    """The installed bundle's manifest, kept so the initramfs can check the meta."""
    return f"slots/{slot.value}.manifest"


def signature_file(slot: SlotName) -> str:
    return f"slots/{slot.value}.manifest.sig"


class SlotStatus(StrEnum):
    OK = "ok"
    PENDING = "pending"
    FAILED = "failed"
    EMPTY = "empty"


_HEX = re.compile(r"^[0-9a-f]+$")
_TOKEN = re.compile(r"^[A-Za-z0-9._:+~/@-]{1,200}$")
_INT_FIELDS = ("SIZE", "DATA_BLOCK_SIZE", "HASH_BLOCK_SIZE")
_TIME_FIELDS = ("INSTALLED_AT", "ACTIVATED_AT", "LAST_GOOD_AT")
_HEX_FIELDS = ("SHA256", "ROOT_HASH", "SALT")
_TEXT_FIELDS = ("VERSION", "HASH_ALG", "SOURCE")
KNOWN_FIELDS = ("STATUS", *_TEXT_FIELDS, *_INT_FIELDS, *_HEX_FIELDS, *_TIME_FIELDS)


class SlotMeta(BaseModel):
    """``slots/X.meta``. Unknown keys are kept so a rewrite never loses them."""

    model_config = ConfigDict(frozen=True)

    status: SlotStatus = SlotStatus.EMPTY
    version: str | None = None
    size: int | None = None
    sha256: str | None = None
    root_hash: str | None = None
    salt: str | None = None
    data_block_size: int | None = None
    hash_block_size: int | None = None
    hash_alg: str | None = None
    installed_at: datetime | None = None
    activated_at: datetime | None = None
    last_good_at: datetime | None = None
    source: str | None = None
    extra: dict[str, str] = {}

    def to_kv(self) -> dict[str, str]:
        values: dict[str, str] = {"STATUS": self.status.value}
        for key in KNOWN_FIELDS[1:]:
            value = getattr(self, key.lower())
            if value is None:
                continue
            values[key] = format_time(value) if isinstance(value, datetime) else str(value)
        # Unknown keys, and known ones whose value was invalid: kept as read.
        values.update({k: v for k, v in self.extra.items() if k not in values})
        return values


def _check_field(key: str, value: str) -> object:
    """Return the typed value of a meta field, or raise ValueError."""
    if key == "STATUS":
        return SlotStatus(value.lower())
    if key in _INT_FIELDS:
        if not (value.isascii() and value.isdigit() and len(value) <= 19):
            raise ValueError(value)
        number = int(value)
        block = key != "SIZE"
        if number > (MAX_BLOCK_SIZE if block else MAX_SIZE) or (
                block and (number < 512 or number & (number - 1))):
            raise ValueError(value)
        return number
    if key in _HEX_FIELDS:
        if value == "-" and key == "SALT":
            return value
        if not _HEX.match(value.lower()) or (key == "SHA256" and len(value) != 64):
            raise ValueError(value)
        return value.lower()
    if key in _TIME_FIELDS:
        when = parse_time(value)
        if when is None:
            raise ValueError(value)
        return when
    if not _TOKEN.match(value):
        raise ValueError(value)
    return value


def parse_meta(text: str | None, slot: SlotName) -> tuple[SlotMeta, list[str]]:
    if text is None:
        return SlotMeta(), []
    values, problems = parse_kv(text)
    fields: dict[str, object] = {}
    extra: dict[str, str] = {}
    for key, value in values.items():
        if key not in KNOWN_FIELDS:
            extra[key] = value
            continue
        try:
            fields[key.lower()] = _check_field(key, value)
        except ValueError:
            problems.append(f"{key} has an invalid value")
            if key != "STATUS":  # kept as it is: a rewrite must not lose it
                extra[key] = value
    if not values:  # an existing meta says at least STATUS=empty
        problems.append(f"holds no KEY=value line; slot {slot} treated as empty")
    if "status" not in fields:
        # A meta we cannot trust is never "ok": it must not become a rollback target.
        fields["status"] = SlotStatus.FAILED if values else SlotStatus.EMPTY
        if values:
            problems.append("STATUS is missing or invalid; treated as failed")
    meta = SlotMeta.model_validate({**fields, "extra": extra})
    return meta, [f"{meta_file(slot)}: {p}" for p in problems]


class Rollback(BaseModel):
    model_config = ConfigDict(frozen=True)

    from_slot: SlotName
    to_slot: SlotName
    at: datetime | None = None
    reason: str = "unknown"

    def to_kv(self) -> dict[str, str]:
        values = {"FROM": self.from_slot.value, "TO": self.to_slot.value, "REASON": self.reason}
        if self.at is not None:
            values["AT"] = format_time(self.at)
        return values


def parse_rollback(text: str | None) -> tuple[Rollback | None, list[str]]:
    if text is None:
        return None, []
    values, problems = parse_kv(text)
    from_slot = SlotName.parse(values.get("FROM", ""))
    to_slot = SlotName.parse(values.get("TO", ""))
    if from_slot is None or to_slot is None:
        return None, [f"{LAST_ROLLBACK}: FROM and TO must be A or B; ignored"]
    rollback = Rollback(
        from_slot=from_slot,
        to_slot=to_slot,
        at=parse_time(values["AT"]) if "AT" in values else None,
        reason=values.get("REASON", "unknown")[:64] or "unknown",
    )
    return rollback, [f"{LAST_ROLLBACK}: {p}" for p in problems]


def parse_slot_name(text: str | None) -> tuple[SlotName, list[str]]:
    if text is None:
        return DEFAULT_SLOT, [f"{AB_STATE} is missing; slot {DEFAULT_SLOT} assumed"]
    slot = SlotName.parse(text.strip())  # the initramfs trims the file too
    if slot is not None:
        return slot, []
    return DEFAULT_SLOT, [f"{AB_STATE} must be A or B; slot {DEFAULT_SLOT} assumed"]


def parse_count(
    text: str | None, name: str, default: int, low: int, high: int
) -> tuple[int, list[str]]:
    if text is None:
        return default, []
    value = text.strip()
    if value.isdigit():
        value = value.lstrip("0") or "0"
    # Check the length before int(): a huge string must not cost time or raise.
    if not (value.isascii() and value.isdigit() and len(value) <= len(str(high))) or not (
        low <= int(value) <= high
    ):
        return default, [f"{name} must be a whole number from {low} to {high}; {default} assumed"]
    return int(value), []


class SlotsState(BaseModel):
    """Everything PERSIST says about the slots, with the problems found reading it.

    ``unreadable`` names the files that are there but could not be read (a
    link, a pipe, a directory, too large...): their defaults stand in for
    reading, and a meta among them must never be rewritten from that default.
    """

    model_config = ConfigDict(frozen=True)

    primary: SlotName
    boot_count: int
    boot_attempts: int
    meta: dict[SlotName, SlotMeta]
    last_rollback: Rollback | None
    problems: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()


# An unreadable meta may describe a good system, or not: it is never a
# rollback target, and never shown as empty.
UNREADABLE_META = SlotMeta(status=SlotStatus.FAILED)


def read_slots_state(pdir: PersistDir) -> SlotsState:
    problems: list[str] = pdir.health()
    unreadable: list[str] = []

    def text(name: str) -> str | None:
        try:
            data = pdir.read_bytes(name)
        except AnklumeError as e:  # a link, a pipe, a directory, too large: named
            problems.append(str(e))
            unreadable.append(name)
            return None
        if data is None:
            return None
        content, odd = decode(name, data)
        problems.extend(odd)
        return content

    def value(name: str, parse: Callable[[str | None], tuple[T, list[str]]], fallback: T) -> T:
        content = text(name)
        if name in unreadable:
            return fallback
        result, found = parse(content)
        problems.extend(found)
        return result

    primary = value(AB_STATE, parse_slot_name, DEFAULT_SLOT)
    count = value(BOOT_COUNT, lambda t: parse_count(t, BOOT_COUNT, 0, 0, MAX_BOOT_COUNT), 0)
    attempts = value(BOOT_ATTEMPTS, lambda t: parse_count(
        t, BOOT_ATTEMPTS, DEFAULT_ATTEMPTS, 1, MAX_ATTEMPTS), DEFAULT_ATTEMPTS)
    meta = {s: value(meta_file(s), partial(parse_meta, slot=s), UNREADABLE_META) for s in SlotName}
    rollback = value(LAST_ROLLBACK, parse_rollback, None)
    for slot in SlotName:
        if meta[slot].status is SlotStatus.OK:
            problems.extend(check_verity(pdir, slot))
    for name in (AB_STATE, BOOT_COUNT, LAST_ROLLBACK, *map(meta_file, SlotName)):
        # A crash leaves NAME.tmp files (removed at start), never a directory.
        if pdir.kind(name + TMP_SUFFIX) == "a directory":
            problems.append(f"PERSIST {name}{TMP_SUFFIX} is a directory: {name} cannot be "
                            f"written until it is removed from ANKLUME-PERSIST")
    return SlotsState(primary=primary, boot_count=count, boot_attempts=attempts, meta=meta,
                      last_rollback=rollback, problems=tuple(dict.fromkeys(problems)),
                      unreadable=tuple(unreadable))


VERITY_MAGIC = b"verity\0\0"  # the superblock veritysetup format writes first


def check_verity(pdir: PersistDir, slot: SlotName) -> list[str]:
    """What would stop the initramfs opening an ok slot's hash tree. Only
    its first bytes are read: the tree itself is checked at boot."""
    name = verity_file(slot)
    try:
        head = pdir.head(name, len(VERITY_MAGIC))
    except AnklumeError as e:
        return [f"{e}; slot {slot} cannot be verified at boot"]
    if head is not None and head != VERITY_MAGIC:
        return [f"{name} is not a dm-verity hash tree: slot {slot} will fail its check at boot"]
    return []


Entry = tuple[str, bytes]  # a file and its new content, for PersistDir.write_files


def primary_entries(slot: SlotName, boot_count: int) -> list[Entry]:
    """Make ``slot`` primary. Order matters for a power cut: the count is reset
    first, so the new primary never starts with the old primary's attempts."""
    return [count_entry(boot_count), (AB_STATE, f"{slot.value}\n".encode())]


def count_entry(count: int) -> Entry:
    return BOOT_COUNT, f"{count}\n".encode()


def meta_entry(slot: SlotName, meta: SlotMeta) -> Entry:
    return _kv_entry(meta_file(slot), meta.to_kv())


def rollback_entry(rollback: Rollback) -> Entry:
    return _kv_entry(LAST_ROLLBACK, rollback.to_kv())


def _kv_entry(name: str, values: dict[str, str]) -> Entry:
    data = format_kv(values).encode()
    if len(data) > MAX_FILE_BYTES:  # it could not be read back
        raise FileTooLarge(f"PERSIST {name} would be larger than {MAX_FILE_BYTES // 1024} KiB "
                           "(it holds too many unknown keys): remove the keys you added")
    return name, data


def write_primary(pdir: PersistDir, slot: SlotName, boot_count: int) -> None:
    pdir.write_files(primary_entries(slot, boot_count))


def write_boot_count(pdir: PersistDir, count: int) -> None:
    pdir.write_files([count_entry(count)])


def write_meta(pdir: PersistDir, slot: SlotName, meta: SlotMeta) -> None:
    pdir.write_files([meta_entry(slot, meta)])


def write_rollback(pdir: PersistDir, rollback: Rollback) -> None:
    pdir.write_files([rollback_entry(rollback)])
