"""The start's look at the ESP (anklumed/slots/boot_menu.py): each read is
an mtools or blkid process, which a slow machine pays at every boot (QEMU
without KVM, a USB 2 stick), so the start reads each thing once."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from anklumed import command
from anklumed.handoff import Handoff
from anklumed.persist import PersistStore
from anklumed.slots import boot_entries as be
from anklumed.slots import boot_menu, esp
from anklumed.slots.boot_menu import BootMenu
from anklumed.slots.controller import SlotController
from anklumed.stick import EFI_LABEL, PERSIST_LABEL, BootStick, Partition, SlotName
from devtools.tiny_pe import tiny_pe

A = SlotName.A
UUID = "0f0e0d0c-0b0a-0908-0706-050403020100"


def esp_booting_a(tmp_path: Path) -> Path:
    """A FAT image as anklume-image leaves the ESP: A's UKI and A's menu."""
    image = tmp_path / "esp.img"
    subprocess.run(["mkfs.vfat", "-C", image, "8192"], check=True, capture_output=True)
    (tmp_path / "a.efi").write_bytes(tiny_pe(b"kernel of slot A" * 3000))
    fat = esp.Esp(image)
    fat.make_dirs("EFI", be.UKI_DIR)
    subprocess.run(["mcopy", "-i", image, tmp_path / "a.efi", f"::/{be.uki_path(A)}"],
                   check=True, env={"MTOOLS_SKIP_CHECK": "1"})
    fat.apply(be.plan([], be.wanted_entries(A, {A}, 3, UUID), keep_counter=False))
    return image


def test_the_start_lists_the_kernels_and_the_entries_on_the_esp_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = esp_booting_a(tmp_path)
    (tmp_path / "persist").mkdir()
    stick = BootStick(disk=tmp_path / "disk", size=1 << 30, partitions={
        EFI_LABEL: Partition(label=EFI_LABEL, number=1, size=8 << 20, device=image),
        PERSIST_LABEL: Partition(label=PERSIST_LABEL, number=4, size=64 << 20,
                                 device=tmp_path / "persist")})
    # FAKE: blkid reads a PARTUUID from a partition's GPT entry; here a file stands in.
    monkeypatch.setattr(boot_menu, "partuuid", lambda device: UUID)
    listed: list[str] = []
    real_run = command.run

    def counting_run(argv: list[str | Path],
                     **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        if argv[0] == "mdir":
            listed.append(str(argv[-1]))
        return real_run(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(esp, "run", counting_run)
    slots = SlotController(PersistStore(None, directory=tmp_path / "persist"),
                           Handoff(source="boot.env", slot=A), None)
    slots.menu = BootMenu(lambda: stick, tmp_path / "desktops")
    asyncio.run(slots.start())
    assert slots.state is not None and slots.state.primary is A
    assert listed.count(f"::/{be.UKI_DIR}") == 1
    assert listed.count(f"::/{be.ENTRIES_DIR}") == 1
    assert sorted(esp.Esp(image).entries()) == sorted(be.wanted_entries(A, {A}, 3, UUID))
