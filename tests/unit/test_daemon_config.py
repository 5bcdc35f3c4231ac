"""anklumed.toml's LUKS2 key-derivation settings reach the data layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from anklumed.config import load_config
from anklumed.data import luks
from anklumed.errors import InvalidArgument


def test_the_argon2_memory_is_the_configured_one_or_sized_by_ram(tmp_path: Path) -> None:
    config = tmp_path / "anklumed.toml"
    config.write_text("luks_unlock_ms = 200\nluks_memory_mib = 64\n")
    paths = load_config(config).data_paths()
    assert (paths.luks_unlock_ms, paths.luks_memory_kib) == (200, 64 * 1024)
    assert luks._memory(paths.luks_memory_kib) == "65536"
    config.write_text("")
    assert load_config(config).data_paths().luks_memory_kib is None
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable: 2000000 kB\n")
    assert luks.argon2_memory_kib(meminfo) == 500000  # a quarter of what is available


def test_an_argon2_memory_below_32_mib_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "anklumed.toml"
    config.write_text("luks_memory_mib = 8\n")
    with pytest.raises(InvalidArgument, match="luks_memory_mib"):
        load_config(config)
