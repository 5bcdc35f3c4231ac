"""What one build makes: every option of ``anklume-image build``, validated once."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

from anklumed.slots.bundle import COMPATIBLE

MiB = 1024 * 1024


class Base(StrEnum):
    DEBIAN = "debian"
    ARCH = "arch"


class Desktop(StrEnum):
    MINIMAL = "minimal"  # console only
    SWAY = "sway"        # the default desktop (seed: "Environnements de bureau")
    LABWC = "labwc"
    KDE = "kde"
    ALL = "all"          # every desktop, chosen in the boot menu


# The graphical sessions an image offers, the default first (the boot menu's
# default entry starts it; the others get entries of their own).
SESSIONS: dict[Desktop, tuple[Desktop, ...]] = {
    Desktop.MINIMAL: (),
    Desktop.SWAY: (Desktop.SWAY,),
    Desktop.LABWC: (Desktop.LABWC,),
    Desktop.KDE: (Desktop.KDE,),
    Desktop.ALL: (Desktop.SWAY, Desktop.LABWC, Desktop.KDE),
}


# Partition sizes from the seed's "Boot Media Layout".
DEFAULT_EFI_MIB = 512
DEFAULT_SLOT_MIB = 1536
DEFAULT_PERSIST_MIB = 100
DEFAULT_CACHE = Path("/var/cache/anklume-image")
_SUITE = re.compile(r"^[a-z][a-z0-9-]{1,30}$")


class BuildConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    out: Path
    base: Base = Base.DEBIAN
    suite: str = "trixie"  # Debian 13, the seed's default
    arch: str = "amd64"
    desktop: Desktop = Desktop.MINIMAL
    version: str = "0.1.0"
    compatible: str = COMPATIBLE
    zfs: bool = True  # zfs-dkms is built in the chroot: minutes; --no-zfs for quick builds
    signing_key: Path | None = None
    secure_boot_key: Path | None = None
    secure_boot_cert: Path | None = None
    mirror: str | None = None  # None: the mirror this host's apt uses
    efi_mib: int = DEFAULT_EFI_MIB
    slot_mib: int = DEFAULT_SLOT_MIB
    persist_mib: int = DEFAULT_PERSIST_MIB
    compression_level: int = 3  # zstd: level 15 saves 16 % for 30x the time
    cache_dir: Path = DEFAULT_CACHE
    source_date_epoch: int | None = None

    @field_validator("suite")
    @classmethod
    def _suite(cls, value: str) -> str:
        if not _SUITE.match(value):
            raise ValueError(f"{value!r} is not a suite name (e.g. trixie, bookworm)")
        return value

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        if value != "amd64":
            raise ValueError(f"architecture {value!r} is not supported yet (amd64 is)")
        return value

    @field_validator("efi_mib", "slot_mib", "persist_mib")
    @classmethod
    def _size(cls, value: int) -> int:
        if not 16 <= value <= 64 * 1024:
            raise ValueError(f"{value} MiB is not a sensible partition size (16 to 65536)")
        return value

    @property
    def work_dir(self) -> Path:
        """Intermediate files, beside the output (same filesystem: renames are atomic)."""
        return self.out.with_name(self.out.name + ".build")

    @property
    def sessions(self) -> tuple[Desktop, ...]:
        return SESSIONS[self.desktop]

    @property
    def arch_efi(self) -> str:
        return {"amd64": "x64"}[self.arch]
