"""The built stick image, read back as a person's machine and the initramfs would."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from anklume_image import esp, stick
from anklume_image.build import build, sha256_file
from anklume_image.errors import BuildError
from anklumed.persist import PersistDir
from anklumed.slots import boot_entries, bundle, model
from anklumed.slots.model import SlotStatus
from anklumed.stick import SlotName
from tests.image.conftest import WORK, Built, small_config

pytestmark = pytest.mark.image
MiB = 1024 * 1024


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          text=True).stdout


def extract(image: Path, number: int, out: Path, length: int | None = None) -> Path:
    """Copy one partition (or its first ``length`` bytes) out of the image."""
    start = stick.partition_starts(image)[number] * stick.SECTOR
    end_sector = int(sh("sgdisk", "-i", str(number), image).split("Last sector: ")[1].split()[0])
    size = length if length is not None else (end_sector + 1) * stick.SECTOR - start
    with image.open("rb") as src, out.open("wb") as dst:
        src.seek(start)
        while size > 0:
            chunk = src.read(min(size, 4 * MiB))
            dst.write(chunk)
            size -= len(chunk)
    return out


def test_the_image_has_its_checksum_and_stays_sparse(built: Built) -> None:
    digest = sha256_file(built.image)  # 1.6 GB: streamed, not read whole
    assert (built.image.parent / "anklume-live.img.sha256").read_text() == \
        f"{digest}  anklume-live.img\n"
    on_disk = built.image.stat().st_blocks * 512
    assert on_disk < built.image.stat().st_size / 2, "empty slot B must cost no disk"


def test_the_gpt_has_the_contract_layout(built: Built) -> None:
    listing = sh("sgdisk", "--print", built.image)
    rows = [line.split() for line in listing.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[5], r[6]) for r in rows] == [
        ("1", "EF00", "ANKLUME-EFI"), ("2", "8300", "ANKLUME-OS-A"),
        ("3", "8300", "ANKLUME-OS-B"), ("4", "8300", "ANKLUME-PERSIST")]


def persist_dir(built: Built, tmp_path: Path) -> Path:
    part = extract(built.image, 4, tmp_path / "persist.img")
    files = tmp_path / "persist"
    files.mkdir()
    sh("debugfs", "-R", f"rdump / {files}", part)
    return files


def test_persist_holds_slot_a_installed_and_signed(built: Built, tmp_path: Path) -> None:
    files = persist_dir(built, tmp_path)
    state = model.read_slots_state(PersistDir(files))
    assert state.problems == ()
    assert (state.primary, state.boot_count) == (SlotName.A, 0)
    assert state.meta[SlotName.B].status is SlotStatus.EMPTY
    meta = state.meta[SlotName.A]
    assert meta.status is SlotStatus.OK and meta.version == "1.0.0"
    manifest_file = next((WORK / "anklume-live.img.bundle").glob("*.manifest"))
    manifest = bundle.parse_manifest(manifest_file.read_bytes())
    assert (meta.root_hash, meta.sha256, meta.size) == \
        (manifest.root_hash, manifest.sha256, manifest.size)
    signature = manifest_file.with_name(manifest_file.name + ".sig").read_bytes()
    keys = bundle.load_trusted_keys(built.public_key.parent)
    assert bundle.check_signature(manifest_file.read_bytes(), signature, keys)
    # What the initramfs verifies the meta against: the bundle's exact bytes.
    assert (files / "slots" / "A.manifest").read_bytes() == manifest_file.read_bytes()
    assert (files / "slots" / "A.manifest.sig").read_bytes() == signature


def test_slot_a_verifies_against_its_tree(built: Built, tmp_path: Path) -> None:
    files = persist_dir(built, tmp_path)
    meta = model.read_slots_state(PersistDir(files)).meta[SlotName.A]
    assert meta.size is not None and meta.root_hash is not None
    slot = extract(built.image, 2, tmp_path / "slot-a.img", meta.size)
    assert hashlib.sha256(slot.read_bytes()).hexdigest() == meta.sha256
    sh("veritysetup", "verify", slot, files / "slots" / "A.verity", meta.root_hash)
    with slot.open("r+b") as f:  # one flipped byte: the tree must refuse it
        f.seek(meta.size // 2)
        byte = f.read(1)
        f.seek(meta.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = subprocess.run(["veritysetup", "verify", slot, files / "slots" / "A.verity",
                           meta.root_hash], capture_output=True, check=False)
    assert proc.returncode != 0


def test_the_esp_boots_systemd_boot_with_this_sticks_persist(built: Built,
                                                             tmp_path: Path) -> None:
    part = extract(built.image, 1, tmp_path / "esp.img")
    assert "BOOTX64" in sh("mdir", "-i", part, "::/EFI/BOOT")
    guid = sh("sgdisk", "-i", "4", built.image).split("Partition unique GUID: ")[1].split()[0]
    names = sh("mdir", "-i", part, "-b", "::/loader/entries").split()
    assert sorted(n.rsplit("/", 1)[-1] for n in names) == sorted(esp.entries(guid.lower()))
    for name in esp.entries(guid.lower()):
        entry = sh("mtype", "-i", part, f"::/loader/entries/{name}")
        assert f"anklume.persist=PARTUUID={guid.lower()}" in entry
        assert "boot=anklume" in entry and "linux /EFI/anklume/slot-a.efi" in entry
    assert "default" not in sh("mtype", "-i", part, "::/loader/loader.conf")


def test_slot_as_kernel_is_on_the_esp_and_pinned_by_its_manifest(built: Built,
                                                                  tmp_path: Path) -> None:
    part = extract(built.image, 1, tmp_path / "esp.img")
    uki = tmp_path / "slot-a.efi"
    sh("mcopy", "-i", part, "::/EFI/anklume/slot-a.efi", uki)
    assert uki.read_bytes()[:2] == b"MZ"  # a PE binary: systemd-stub with the kernel
    manifest = next((built.image.parent / (built.image.name + ".bundle")).glob("*.manifest"))
    m = bundle.parse_manifest(manifest.read_bytes())
    assert m.uki == "usr/lib/anklume/boot/uki.efi"
    assert m.uki_sha256 == hashlib.sha256(uki.read_bytes()).hexdigest()
    assert m.uki_size == uki.stat().st_size


def test_slot_as_kernel_carries_each_entrys_command_line(built: Built, tmp_path: Path) -> None:
    """The UKI's profiles (ukify --profile/--join-profile): one .cmdline per
    kind of entry, read back from the file and checked with objdump too."""
    part = extract(built.image, 1, tmp_path / "esp.img")
    uki = tmp_path / "slot-a.efi"
    sh("mcopy", "-i", part, "::/EFI/anklume/slot-a.efi", uki)
    desktops = tuple(d.value for d in built.config.sessions)
    wanted = [p.cmdline for p in boot_entries.profiles(desktops)]
    assert boot_entries.profile_cmdlines(uki.read_bytes()) == wanted
    headers = sh("objdump", "-h", uki)
    assert headers.count(" .profile ") == len(wanted), headers
    assert "anklume.persist" not in " ".join(wanted) and "anklume.kernel" not in " ".join(wanted)


def test_the_os_runs_anklume_on_the_images_own_python(built: Built, tmp_path: Path) -> None:
    """The daemon and the CLI on Debian 13's Python and python3-* packages
    (no virtualenv in the image), with their units enabled and the key in place."""
    files = persist_dir(built, tmp_path)
    meta = model.read_slots_state(PersistDir(files)).meta[SlotName.A]
    slot = extract(built.image, 2, tmp_path / "slot-a.img", meta.size)
    root = tmp_path / "root"
    sh("unsquashfs", "-q", "-n", "-d", root, slot)
    assert (root / "etc/systemd/system/multi-user.target.wants/anklumed.service").is_symlink()
    assert (root / "etc/anklume/keys.d/anklume-image.pem").read_bytes() == \
        built.public_key.read_bytes()
    version = sh("chroot", root, "python3", "-c", "import sys; print(sys.version_info[:2])")
    assert version.strip() == "(3, 13)"
    sh("chroot", root, "python3", "-c", "import anklumed.main, anklumed.service.app, "
       "anklumectl.main, anklume_client.proxies, anklumed.data.manager, anklumed.slots.update")
    assert "usage: anklumectl" in sh("chroot", root, "anklumectl", "--help")
    # /etc and /var marked as updated for this /usr (systemd-update-done's
    # stamps, to the second as the squashfs keeps times): no boot redoes the
    # build's ldconfig, catalog and hwdb (ConditionNeedsUpdate=).
    usr = (root / "usr").stat().st_mtime_ns
    assert usr % 1_000_000_000 == 0, usr
    for stamp in (root / "etc/.updated", root / "var/.updated"):
        assert stamp.stat().st_mtime_ns == usr, (stamp, stamp.stat().st_mtime_ns, usr)


def test_an_unreachable_mirror_leaves_no_image_and_the_next_build_starts_clean(
        tmp_path: Path) -> None:
    config = small_config(tmp_path / "x.img", mirror="http://127.0.0.1:9/debian")
    config.work_dir.mkdir()
    (config.work_dir / "left-by-an-interrupted-build").write_text("junk")
    (tmp_path / "x.img.part").write_text("half an image")
    with pytest.raises(BuildError, match="mmdebstrap failed"):
        build(config)
    assert not (tmp_path / "x.img").exists() and not (tmp_path / "x.img.sha256").exists()
    assert not (config.work_dir / "left-by-an-interrupted-build").exists()
