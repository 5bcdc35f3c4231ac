"""The boot hand-off: what the initramfs tells the running system.

``/run/anklume/boot.env`` is written by the initramfs (DESIGN.md §3). When it is
absent (development, a system booted another way) the kernel command line is
the fallback, and whatever neither says is reported as unknown (None).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from anklumed.persist import parse_kv
from anklumed.stick import SlotName

log = logging.getLogger(__name__)

HANDOFF_PATH = Path("/run/anklume/boot.env")
CMDLINE_PATH = Path("/proc/cmdline")


class VerityState(StrEnum):
    """How the running OS was checked by the initramfs (the hand-off's VERITY)."""

    SIGNED = "signed"  # dm-verity, root hash from a manifest signed by a trusted key
    UNSIGNED = "unsigned"  # dm-verity, but the image carries no keys to check a signature
    OFF = "off"  # not opened with dm-verity
    UNKNOWN = "unknown"  # no hand-off, or a value that is none of the above


def _verity(value: str | None) -> tuple[VerityState, list[str]]:
    if value is None:
        return VerityState.UNKNOWN, []
    value = value.strip().lower()
    # DESIGN.md's first form was 0/1: 1 says dm-verity, nothing about a signature.
    word = {"1": "unsigned", "0": "off"}.get(value, value)
    if word in ("signed", "unsigned", "off"):
        return VerityState(word), []
    return VerityState.UNKNOWN, ["VERITY must be signed, unsigned or off"]


class Handoff(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str  # "boot.env", "cmdline" or "none"
    slot: SlotName | None = None
    boot_count: int | None = None
    rollback: bool | None = None
    rollback_from: SlotName | None = None
    toram: bool | None = None
    verity: VerityState = VerityState.UNKNOWN
    degraded: bool | None = None  # the initramfs's decision said DEGRADED=1
    root_hash: str | None = None
    persist_partuuid: str | None = None
    boot_disk: Path | None = None
    ram_crypt_requested: bool | None = None
    # whose kernel runs: boot.env's KERNEL (the initramfs read it from
    # systemd-stub, docs/boot-chain.md), else anklume.kernel= of the entry
    kernel: SlotName | None = None
    problems: tuple[str, ...] = ()

    def kernel_mismatch(self) -> str | None:
        """The sentence when this slot's system runs on the other slot's
        kernel: the boot menu was behind PERSIST (docs/boot-chain.md);
        anklumed rewrites it at start, so the next boot pairs them again."""
        if self.kernel is None or self.slot is None or self.kernel is self.slot:
            return None
        return (f"slot {self.slot}'s system runs on slot {self.kernel}'s kernel this boot "
                "(the boot menu was behind ANKLUME-PERSIST; it is rewritten for the next boot)")


def _slot(value: str | None) -> SlotName | None:
    return SlotName.parse(value) if value is not None else None


def _flag(value: str | None) -> bool | None:
    if value is None:
        return None
    return {"1": True, "0": False, "yes": True, "no": False}.get(value.strip().lower())


def parse_cmdline(text: str) -> dict[str, str]:
    """``anklume.*`` parameters of a kernel command line (a bare flag means 1)."""
    params: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if key.startswith("anklume."):
            params[key] = value if sep else "1"
    return params


def parse_handoff(env_text: str | None, cmdline_text: str) -> Handoff:
    cmdline = parse_cmdline(cmdline_text)
    ram_crypt = _flag(cmdline.get("anklume.ram_crypt"))
    kernel = _slot(cmdline.get("anklume.kernel"))
    if env_text is None:
        return Handoff(
            source="cmdline" if cmdline else "none",
            slot=_slot(cmdline.get("anklume.slot")),
            toram=_flag(cmdline.get("anklume.toram")),
            ram_crypt_requested=ram_crypt,
            kernel=kernel,
        )
    values, problems = parse_kv(env_text)
    verity, verity_problems = _verity(values.get("VERITY"))
    problems += verity_problems
    count = values.get("BOOT_COUNT", "")
    fields = {
        "slot": _slot(values.get("SLOT")),
        "boot_count": int(count) if count.isdigit() else None,
        "rollback": _flag(values.get("ROLLBACK")),
        "rollback_from": _slot(values.get("ROLLBACK_FROM")),
        "toram": _flag(values.get("TORAM")),
        "verity": verity,
        "degraded": _flag(values.get("DEGRADED")),
        "root_hash": values.get("ROOT_HASH") or None,
        "persist_partuuid": (values.get("PERSIST_PARTUUID") or "").lower() or None,
        "boot_disk": Path(values["BOOT_DISK"]) if values.get("BOOT_DISK", "").startswith("/dev/")
        else None,
    }
    if fields["slot"] is None:
        problems.append("SLOT is missing or not A/B")
    return Handoff(
        source="boot.env",
        ram_crypt_requested=ram_crypt,
        kernel=_slot(values.get("KERNEL") or None) or kernel,
        problems=tuple(f"boot.env: {p}" for p in problems),
        **fields,
    )


def read_handoff(path: Path = HANDOFF_PATH, cmdline: Path = CMDLINE_PATH) -> Handoff:
    try:
        env_text: str | None = path.read_text(errors="replace")[:65536]
    except FileNotFoundError:
        env_text = None
    except OSError as e:
        log.warning("cannot read %s: %s", path, e)
        env_text = None
    try:
        cmdline_text = cmdline.read_text(errors="replace")
    except OSError:
        cmdline_text = ""
    return parse_handoff(env_text, cmdline_text)
