"""anklumed.toml's LUKS2 key-derivation settings reach the data layer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from anklumed.command import run
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


def test_given_argon2_passes_replace_the_benchmark(tmp_path: Path) -> None:
    """luks_iterations: cryptsetup takes argon2id's time cost as given, for
    the format and for a key added later (the simulation's setting: under
    QEMU's emulation the benchmark took longer than the derivation)."""
    config = tmp_path / "anklumed.toml"
    config.write_text("luks_memory_mib = 32\nluks_iterations = 5\n")
    paths = load_config(config).data_paths()
    assert paths.luks_iterations == 5
    config.write_text("")
    assert load_config(config).data_paths().luks_iterations is None
    config.write_text("luks_memory_mib = 32\nluks_iterations = 5\n")
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(32 << 20)
    luks.format_luks2(disk, b"first", label="anklume-test", memory_kib=paths.luks_memory_kib,
                      iterations=paths.luks_iterations)
    luks.add_key(disk, b"first", b"second", memory_kib=paths.luks_memory_kib,
                 iterations=paths.luks_iterations)
    dump = run(["cryptsetup", "luksDump", disk]).stdout.decode()
    assert re.findall(r"PBKDF:\s+(\S+)", dump) == ["argon2id"] * 2, dump
    assert re.findall(r"Time cost:\s+(\d+)", dump) == ["5"] * 2, dump
    assert re.findall(r"Memory:\s+(\d+)", dump) == ["32768"] * 2, dump


def test_fewer_than_4_argon2_passes_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "anklumed.toml"
    config.write_text("luks_iterations = 1\n")  # cryptsetup's own floor for argon2 is 4
    with pytest.raises(InvalidArgument, match="luks_iterations"):
        load_config(config)
