"""Slot B installed on a machine's stick from the host, between two boots,
with the updater's own steps (anklumed.slots.update), and the stick's
partitions read and changed there: what the image tier's boot tests share
(test_boot_redirect.py, test_broken_boots.py).

Installing on the host is what ``anklume-bundle`` would do from another
computer, and far quicker than an update inside TCG: the slot's image
written to ANKLUME-OS-B with its dm-verity tree computed on the way, its UKI
copied to the ESP and checked against the manifest, then ``activate``
(PERSIST names B).
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from anklume_image import stick
from anklumed.persist import PersistDir
from anklumed.slots import boot_entries
from anklumed.slots.bundle import KeptManifest, Manifest, parse_manifest
from anklumed.slots.esp import MTOOLS_ENV, Esp
from anklumed.slots.update import activate, install_kernel
from anklumed.slots.verity_tree import VerityHasher
from anklumed.stick import SlotName
from devtools.image_vm import Machine
from tests.image.conftest import Built
from tests.image.test_build import extract, sh

CHUNK = 4 * 1024 * 1024
ESP, SLOT_B, PERSIST = 1, 3, 4  # partition numbers on the stick


def put_back(image: Path, number: int, part: Path) -> None:
    """A partition's image written back at its place on the stick."""
    start = stick.partition_starts(image)[number] * stick.SECTOR
    with part.open("rb") as src, image.open("r+b") as dst:
        dst.seek(start)
        while chunk := src.read(CHUNK):
            dst.write(chunk)


def write_slot(image: Path, squashfs: Path, manifest: Manifest) -> bytes:
    """The slot's bytes at ANKLUME-OS-B and their dm-verity tree (the updater's
    pass: the root hash must be the manifest's)."""
    hasher = VerityHasher(manifest.verity_params())
    start = stick.partition_starts(image)[SLOT_B] * stick.SECTOR
    with squashfs.open("rb") as src, image.open("r+b") as dst:
        dst.seek(start)
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            hasher.update(chunk)
    hasher.update(bytes(manifest.padded_size - manifest.size))
    result = hasher.finish()
    assert result.root_hash == manifest.root_hash
    return result.tree


def persist_partuuid(image: Path) -> str:
    return sh("sgdisk", "-i", str(PERSIST), image).split("Partition unique GUID: ")[1] \
        .split()[0].lower()


@contextmanager
def partition(machine: Machine, number: int, name: str) -> Iterator[Path]:
    """One partition of the machine's stick as a file, written back after."""
    part = extract(machine.stick, number, machine.rundir / f"{name}.img")
    try:
        yield part
        put_back(machine.stick, number, part)
    finally:
        part.unlink()


@contextmanager
def persist_mounted(machine: Machine) -> Iterator[PersistDir]:
    with partition(machine, PERSIST, "persist") as part:
        mnt = machine.rundir / "persist-mnt"
        mnt.mkdir(exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(part), str(mnt)], check=True)
        try:
            yield PersistDir(mnt)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)


def install_slot_b(machine: Machine, built: Built, menu_for: SlotName) -> None:
    """The build's bundle as slot B, activated (PERSIST: B ok and primary,
    boot-count 0). ``menu_for``: the primary the boot menu is written for --
    B, as the updater rewrites it after activation; A, the menu as it was
    before (a power cut between PERSIST's write and the ESP's)."""
    bundle_dir = built.image.with_name(built.image.name + ".bundle")
    manifest_file = next(bundle_dir.glob("*.manifest"))
    manifest = parse_manifest(manifest_file.read_bytes())
    squashfs = bundle_dir / manifest.image
    tree = write_slot(machine.stick, squashfs, manifest)
    with partition(machine, ESP, "esp") as esp_file:
        # The kernel phase: B's UKI to the ESP, read back against UKI_SHA256.
        install_kernel(Esp(esp_file), squashfs, SlotName.B, manifest)
    # Activation: tree, manifest, signature, meta ok, boot-count 0, ab-state B.
    with persist_mounted(machine) as pdir:
        activate(pdir, SlotName.B, manifest, KeptManifest.beside(manifest_file),
                 tree, "test: the build's bundle", datetime.now(UTC))
    # The menu with both slots ok (the other slot's entry is where the boot
    # loader falls back).
    with partition(machine, ESP, "esp") as esp_file:
        esp = Esp(esp_file)
        wanted = boot_entries.wanted_entries(menu_for, {SlotName.A, SlotName.B},
                                             3, persist_partuuid(machine.stick))
        esp.apply(boot_entries.plan(esp.entries(), wanted, keep_counter=True))


def esp_entries(machine: Machine, name: str) -> list[str]:
    esp = extract(machine.stick, ESP, machine.rundir / f"esp-{name}.img")
    try:
        return sorted(Esp(esp).entries())
    finally:
        esp.unlink()


def flip_byte(machine: Machine, number: int, offset: int) -> None:
    """One byte of a partition inverted, in place on the stick."""
    where = stick.partition_starts(machine.stick)[number] * stick.SECTOR + offset
    with machine.stick.open("r+b") as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0xFF]))


def _mtools(*argv: str | Path) -> bytes:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          env=MTOOLS_ENV).stdout


def edit_esp_file(machine: Machine, path: str, change: Callable[[bytes], bytes]) -> None:
    """The ESP's file ``path`` replaced by ``change(its bytes)`` (the way a
    broken bundle or a person with the stick would leave it, not the
    updater's way)."""
    with partition(machine, ESP, "esp-edit") as esp_file:
        data = _mtools("mcopy", "-i", esp_file, f"::/{path}", "-")
        new = change(data)
        assert new != data
        subprocess.run(["mcopy", "-o", "-i", str(esp_file), "-", f"::/{path}"], check=True,
                       input=new, capture_output=True, env=MTOOLS_ENV)


def pe_section(data: bytes, name: str) -> tuple[int, int]:
    """(file offset, size) of a PE section's contents (a UKI's ``.initrd``...)."""
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    assert data[pe:pe + 4] == b"PE\0\0", "not a PE file"
    sections, optional = struct.unpack_from("<H12xH", data, pe + 6)
    table = pe + 24 + optional
    for i in range(sections):
        entry = table + 40 * i
        section = data[entry:entry + 8].rstrip(b"\0").decode(errors="replace")
        virtual_size, _, raw_size, raw_offset = struct.unpack_from("<IIII", data, entry + 8)
        if section == name:
            return raw_offset, min(virtual_size, raw_size)
    raise AssertionError(f"no {name} section")


def without_initrd(uki: bytes) -> bytes:
    """The UKI with its initramfs zeroed in place (same size, same layout):
    the kernel unpacks nothing (zeros are cpio padding), finds no /init and
    no root= and panics before any of the initramfs's code could run."""
    offset, size = pe_section(uki, ".initrd")
    assert size > 1024 * 1024, size  # an initramfs, not a stub's placeholder
    return uki[:offset] + bytes(size) + uki[offset + size:]
