"""Daemon settings, from /etc/anklume/anklumed.toml (all keys optional)."""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anklumed.data.manager import DataPaths
from anklumed.errors import InvalidArgument
from anklumed.handoff import CMDLINE_PATH, HANDOFF_PATH
from anklumed.persist import DEFAULT_MOUNTPOINT
from anklumed.slots import kernel_signer
from anklumed.slots.bundle import COMPATIBLE, KEYS_DIR
from anklumed.slots.source import HttpSettings

DEFAULT_CONFIG = Path("/etc/anklume/anklumed.toml")


class DeadlineAction(StrEnum):
    REBOOT = "reboot"  # a hung boot then counts as a failed attempt
    LOG = "log"  # development and simulation: say it, do nothing


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    persist_mountpoint: Path = DEFAULT_MOUNTPOINT
    handoff: Path = HANDOFF_PATH
    cmdline: Path = CMDLINE_PATH
    # Skip discovery and use this disk as the boot stick (development only).
    boot_disk: Path | None = None
    # Seconds after the kernel started by which boot-complete.target must be reached.
    boot_deadline: int = Field(default=600, ge=30, le=86400)
    deadline_action: DeadlineAction = DeadlineAction.REBOOT
    # Watch boot-complete.target through systemd and mark the boot good when reached.
    follow_systemd: bool = True
    # Updates: only bundles made for this system, signatures checked against these keys.
    compatible: str = COMPATIBLE
    keys_dir: Path = KEYS_DIR
    # A new slot's kernel is checked against the running one's Secure Boot
    # signer and the firmware's db (anklumed/slots/kernel_signer.py).
    efivars: Path = kernel_signer.EFIVARS
    running_uki: Path = kernel_signer.Machine.running_uki
    # Downloads: a stall longer than the timeout reconnects (resuming with Range);
    # this many failed attempts in a row, with doubling waits, give up.
    download_timeout: float = Field(default=30.0, gt=0, le=600)
    download_attempts: int = Field(default=6, ge=1, le=100)
    download_backoff: float = Field(default=1.0, ge=0, le=60)
    # The data disk: where it is mounted, where Incus keeps its state (bound
    # from the data disk before incus.service), Incus's API socket.
    data_mountpoint: Path = DataPaths.mountpoint
    incus_state_dir: Path = DataPaths.incus_state
    incus_socket: Path = DataPaths.incus_socket
    # Offer loop devices as data disks (simulation and tests only); with
    # loop_disks_under, only those whose image file is under that directory:
    # a simulation's own, not those of another test running beside it.
    allow_loop_disks: bool = False
    loop_disks_under: Path | None = None
    # Time the LUKS2 key derivation (argon2id) should take on this machine when
    # the disk is set up: the cost of each guess for a thief, and of each unlock.
    luks_unlock_ms: int = Field(default=DataPaths.luks_unlock_ms, ge=50, le=30000)
    # Its memory in MiB; unset: a quarter of the available RAM, 64 MiB to 1 GiB.
    luks_memory_mib: int | None = Field(default=None, ge=32, le=4096)
    # Its passes, given instead of measured (luks_unlock_ms is then unused):
    # for the simulation and the tests, where cryptsetup's benchmark costs
    # more than the key derivation itself. Unset on a real machine.
    luks_iterations: int | None = Field(default=None, ge=4, le=1000)

    def data_paths(self) -> DataPaths:
        return DataPaths(self.data_mountpoint, self.incus_state_dir, self.incus_socket,
                         self.luks_unlock_ms,
                         None if self.luks_memory_mib is None else self.luks_memory_mib * 1024,
                         self.luks_iterations)

    def kernel_machine(self) -> kernel_signer.Machine:
        return kernel_signer.Machine(self.efivars, self.running_uki)

    def http_settings(self) -> HttpSettings:
        return HttpSettings(read_timeout=self.download_timeout,
                            attempts=self.download_attempts, backoff=self.download_backoff)


def load_config(path: Path | None) -> Config:
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return Config()
        path = DEFAULT_CONFIG
    try:
        return Config.model_validate(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as e:
        raise InvalidArgument(f"invalid configuration {path}: {e}") from e
