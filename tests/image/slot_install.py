"""Slot B installed on a machine's stick from the host, between two boots,
with the updater's own steps (anklumed.slots.update), and the stick's
partitions read and changed there: what the image tier's boot tests share
(test_broken_boots.py).

Installing on the host is what ``anklume-bundle`` would do from another
computer, and far quicker than an update inside TCG: the slot's image
written to ANKLUME-OS-B with its dm-verity tree computed on the way, its UKI
checked against the signer of the kernel slot A runs, copied to the ESP and
checked against the manifest, then ``activate`` (PERSIST names B).
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
from anklumed.slots import boot_entries, kernel_signer
from anklumed.slots.bundle import KeptManifest, Manifest, parse_manifest
from anklumed.slots.esp import MTOOLS_ENV, Esp
from anklumed.slots.update import activate, install_kernel
from anklumed.slots.verity_tree import VerityHasher
from anklumed.stick import SlotName
from devtools.image_vm import Machine
from tests.image.conftest import Built
from tests.image.test_build import extract

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
    return stick.partition_guid(image, PERSIST)


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


def install_slot_b(machine: Machine, built: Built, manifest_file: Path | None = None) -> None:
    """A bundle as slot B (``manifest_file``'s, else the build's), activated
    (PERSIST: B ok and primary, boot-count 0), and the boot menu rewritten
    for B as the updater does after activation."""
    if manifest_file is None:
        manifest_file = next(built.image.with_name(built.image.name + ".bundle")
                             .glob("*.manifest"))
    manifest = parse_manifest(manifest_file.read_bytes())
    squashfs = manifest_file.with_name(manifest.image)
    tree = write_slot(machine.stick, squashfs, manifest)
    with partition(machine, ESP, "esp") as esp_file:
        # The kernel phase: B's UKI signed as the kernel slot A runs (the
        # host has none of the machine's firmware variables: no db to read;
        # test_secure_boot.py's updates in the guest read the real one),
        # then to the ESP, read back against UKI_SHA256.
        assert manifest.uki is not None
        running = machine.rundir / "running-uki.efi"
        running.write_bytes(_mtools("mcopy", "-i", esp_file,
                                    f"::/{boot_entries.uki_path(SlotName.A)}", "-"))
        try:
            kernel_signer.check_new_kernel(squashfs, manifest.uki, kernel_signer.Machine(
                efivars=machine.rundir / "no-efivars", running_uki=running))
        finally:
            running.unlink()
        install_kernel(Esp(esp_file), squashfs, SlotName.B, manifest)
    # Activation: tree, manifest, signature, meta ok, boot-count 0, ab-state B.
    with persist_mounted(machine) as pdir:
        activate(pdir, SlotName.B, manifest, KeptManifest.beside(manifest_file),
                 tree, "test: installed from the host", datetime.now(UTC))
    # The menu with both slots ok (the other slot's entry is where the boot
    # loader falls back).
    with partition(machine, ESP, "esp") as esp_file:
        esp = Esp(esp_file)
        wanted = boot_entries.wanted_entries(SlotName.B, {SlotName.A, SlotName.B},
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


def read_esp_file(machine: Machine, path: str) -> bytes:
    with partition(machine, ESP, "esp-read") as esp_file:
        return _mtools("mcopy", "-i", esp_file, f"::/{path}", "-")


def _edit(esp_file: Path, path: str, change: Callable[[bytes], bytes]) -> None:
    data = _mtools("mcopy", "-i", esp_file, f"::/{path}", "-")
    new = change(data)
    assert new != data, path
    subprocess.run(["mcopy", "-o", "-i", str(esp_file), "-", f"::/{path}"],
                   check=True, input=new, capture_output=True, env=MTOOLS_ENV)


def edit_esp_file(machine: Machine, path: str, change: Callable[[bytes], bytes]) -> None:
    """The ESP's file ``path`` replaced by ``change(its bytes)`` (the way a
    broken bundle or a person with the stick would leave it, not the
    updater's way)."""
    with partition(machine, ESP, "esp-edit") as esp_file:
        _edit(esp_file, path, change)


def run_from_the_stick(machine: Machine) -> None:
    """The menu's entries that copy the system to RAM made to run it from
    the stick instead (``anklume.toram=0``), keeping their names, slots and
    counters: for the boots whose subject is not the copy, which under TCG
    is tens of seconds of each boot that reaches the initramfs."""
    def no_copy(text: bytes) -> bytes:
        return text.replace(b"anklume.toram=1", b"anklume.toram=0")

    with partition(machine, ESP, "esp-toram") as esp_file:
        edited = 0
        for name in Esp(esp_file).entries():
            path = f"{boot_entries.ENTRIES_DIR}/{name}"
            if b"anklume.toram=1" in _mtools("mcopy", "-i", esp_file, f"::/{path}", "-"):
                _edit(esp_file, path, no_copy)
                edited += 1
        assert edited, "no entry copies the system to RAM"


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


def signed_again(uki: bytes, workdir: Path, key: Path, cert: Path) -> bytes:
    """The UKI's Authenticode signature made anew by ``key`` (its old one no
    longer matches the changed bytes): a kernel the firmware would start
    under Secure Boot, and the updater's kernel check would take, as a
    broken update built and signed the usual way would be."""
    unsigned, out = workdir / "uki-unsigned.efi", workdir / "uki-signed.efi"
    unsigned.write_bytes(uki)
    try:
        subprocess.run(["sbattach", "--remove", str(unsigned)], check=True, capture_output=True)
        subprocess.run(["sbsign", "--key", str(key), "--cert", str(cert), "--output", str(out),
                        str(unsigned)], check=True, capture_output=True)
        return out.read_bytes()
    finally:
        unsigned.unlink()
        out.unlink(missing_ok=True)
