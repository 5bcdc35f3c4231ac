"""pool.conf on ANKLUME-PERSIST: the data disk's description (DESIGN.md §2, §6).

Its presence means "initialized": setup writes it last, after the disk is
fully formatted, so an interrupted setup is never mistaken for a data disk.
Parsed strictly: a damaged pool.conf is reported, never half-trusted.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from anklumed.errors import InvalidArgument
from anklumed.persist import PersistDir, format_kv, parse_kv
from anklumed.timestamps import format_time, parse_time

POOL_CONF = "pool.conf"
# The LUKS2 and filesystem labels and the device-mapper name: <prefix><pool>.
LABEL_PREFIX = "anklume-data-"
FORMAT = 1
POOL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,30}$")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Backend(StrEnum):
    ZFS = "zfs"
    BTRFS = "btrfs"


class Encryption(StrEnum):
    LUKS2 = "luks2"
    NONE = "none"


def check_pool_name(name: str) -> str:
    if not POOL_NAME.match(name):
        raise InvalidArgument(f"{name!r} is not a pool name: lowercase letters, digits, "
                              "- and _, starting with a letter, at most 31 characters")
    return name


class PoolConf(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: int = FORMAT
    pool_name: str
    pool_type: Backend
    encryption: Encryption
    luks_uuid: str | None = None
    fs_uuid: str | None = None  # the filesystem or pool: finds an unencrypted disk
    disk_id: str | None = None  # /dev/disk/by-id/... hint; the UUIDs decide
    key_file: str | None = None  # an absolute path, read by anklumed at unlock
    incus_pool: str | None = None
    created_at: datetime | None = None

    @field_validator("pool_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not POOL_NAME.match(value):
            raise ValueError(f"{value[:40]!r} is not a pool name")
        return value

    @field_validator("luks_uuid")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        if value is not None and not UUID.match(value):
            raise ValueError("not a UUID")
        return value

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"/[A-Za-z0-9._/-]+", value):
            raise ValueError("not an absolute path of plain characters")
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: int) -> int:
        if value != FORMAT:
            raise ValueError(f"format {value} is not supported (this is {FORMAT})")
        return value

    @property
    def mapper_name(self) -> str:
        return f"{LABEL_PREFIX}{self.pool_name}"

    def to_kv(self) -> dict[str, str]:
        values = {"FORMAT": str(self.format), "POOL_NAME": self.pool_name,
                  "POOL_TYPE": self.pool_type.value, "ENCRYPTION": self.encryption.value}
        optional = {"LUKS_UUID": self.luks_uuid, "FS_UUID": self.fs_uuid,
                    "DISK_ID": self.disk_id, "KEY_FILE": self.key_file,
                    "INCUS_POOL": self.incus_pool,
                    "CREATED_AT": format_time(self.created_at) if self.created_at else None}
        values.update({k: v for k, v in optional.items() if v})
        return values


def parse_pool_conf(text: str) -> PoolConf:
    values, problems = parse_kv(text)
    if problems:
        raise InvalidArgument(f"pool.conf is damaged: {problems[0]}")
    fields: dict[str, object] = {k.lower(): v for k, v in values.items()}
    if "created_at" in fields:
        fields["created_at"] = parse_time(str(fields["created_at"]))
    try:
        conf = PoolConf.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]).upper()
        raise InvalidArgument(f"pool.conf is damaged: {where}: {first['msg']}") from None
    if conf.encryption is Encryption.LUKS2 and not conf.luks_uuid:
        raise InvalidArgument("pool.conf is damaged: ENCRYPTION=luks2 without LUKS_UUID")
    return conf


def read_pool_conf(pdir: PersistDir) -> PoolConf | None:
    """None when there is no pool.conf (the data disk is not set up)."""
    text = pdir.read_text(POOL_CONF)
    return None if text is None else parse_pool_conf(text)


def write_pool_conf(pdir: PersistDir, conf: PoolConf) -> None:
    pdir.write_text(POOL_CONF, format_kv(conf.to_kv()))
