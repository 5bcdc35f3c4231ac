"""What PERSIST says about the slots: ab-state, boot-count, slot meta, last rollback.

Parsing is lenient and validation strict: each bad value becomes a problem
(reported to the user) and a safe default, never an exception. The defaults are
the ones the initramfs applies, so both sides agree on what a damaged file means.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from anklumed.persist import PersistDir, format_kv, parse_kv
from anklumed.stick import SlotName

AB_STATE = "ab-state"
BOOT_COUNT = "boot-count"
BOOT_ATTEMPTS = "boot-attempts"
LAST_ROLLBACK = "last-rollback"
DEFAULT_SLOT = SlotName.A
DEFAULT_ATTEMPTS = 3
MAX_ATTEMPTS = 100
MAX_BOOT_COUNT = 9999  # a larger count is garbage, not a real number of boots


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


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime | None:
    """ISO 8601 as written by ``date -u +%Y-%m-%dT%H:%M:%SZ``, or a Unix time."""
    text = text.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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
        values.update(self.extra)
        return values


def _check_field(key: str, value: str) -> object:
    """Return the typed value of a meta field, or raise ValueError."""
    if key == "STATUS":
        return SlotStatus(value.lower())
    if key in _INT_FIELDS:
        number = int(value)
        if number < 0 or (key != "SIZE" and (number < 512 or number & (number - 1))):
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
    try:
        rollback = Rollback(
            from_slot=SlotName(values.get("FROM", "").upper()),
            to_slot=SlotName(values.get("TO", "").upper()),
            at=parse_time(values["AT"]) if "AT" in values else None,
            reason=values.get("REASON", "unknown")[:64] or "unknown",
        )
    except ValueError:
        return None, [f"{LAST_ROLLBACK}: FROM and TO must be A or B; ignored"]
    return rollback, [f"{LAST_ROLLBACK}: {p}" for p in problems]


def parse_slot_name(text: str | None) -> tuple[SlotName, list[str]]:
    if text is None:
        return DEFAULT_SLOT, [f"{AB_STATE} is missing; slot {DEFAULT_SLOT} assumed"]
    value = text.strip().upper()
    if value in ("A", "B"):
        return SlotName(value), []
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
    """Everything PERSIST says about the slots, with the problems found reading it."""

    model_config = ConfigDict(frozen=True)

    primary: SlotName
    boot_count: int
    boot_attempts: int
    meta: dict[SlotName, SlotMeta]
    last_rollback: Rollback | None
    problems: tuple[str, ...] = ()


def read_slots_state(pdir: PersistDir) -> SlotsState:
    problems: list[str] = []

    def take(result: tuple[object, list[str]]) -> object:
        problems.extend(result[1])
        return result[0]

    def text(name: str) -> str | None:
        try:
            return pdir.read_text(name)
        except Exception as e:  # a directory, a huge file: report and use the default
            problems.append(f"{name}: {e}")
            return ""

    primary = take(parse_slot_name(text(AB_STATE)))
    count = take(parse_count(text(BOOT_COUNT), BOOT_COUNT, 0, 0, MAX_BOOT_COUNT))
    attempts = take(
        parse_count(text(BOOT_ATTEMPTS), BOOT_ATTEMPTS, DEFAULT_ATTEMPTS, 1, MAX_ATTEMPTS)
    )
    meta = {s: take(parse_meta(text(meta_file(s)), s)) for s in SlotName}
    rollback = take(parse_rollback(text(LAST_ROLLBACK)))
    return SlotsState.model_validate(
        {
            "primary": primary,
            "boot_count": count,
            "boot_attempts": attempts,
            "meta": meta,
            "last_rollback": rollback,
            "problems": tuple(problems),
        }
    )


def write_primary(pdir: PersistDir, slot: SlotName, boot_count: int) -> None:
    """Make ``slot`` primary. Order matters for a power cut: the count is reset
    first, so the new primary never starts with the old primary's attempts."""
    pdir.write_text(BOOT_COUNT, f"{boot_count}\n")
    pdir.write_text(AB_STATE, f"{slot.value}\n")


def write_boot_count(pdir: PersistDir, count: int) -> None:
    pdir.write_text(BOOT_COUNT, f"{count}\n")


def write_meta(pdir: PersistDir, slot: SlotName, meta: SlotMeta) -> None:
    pdir.write_text(meta_file(slot), format_kv(meta.to_kv()))


def write_rollback(pdir: PersistDir, rollback: Rollback) -> None:
    pdir.write_text(LAST_ROLLBACK, format_kv(rollback.to_kv()))
