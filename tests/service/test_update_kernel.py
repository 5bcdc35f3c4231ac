"""An update through the daemon on a stick that boots each slot's own kernel
(docs/boot-chain.md): the bundle's UKI reaches the ESP, the menu follows
PERSIST, and a bundle without a kernel is refused there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from anklumectl.main import EXIT_CODES
from anklumed.slots import boot_entries as be
from anklumed.slots import bundle
from anklumed.slots.esp import Esp
from anklumed.stick import SlotName
from devtools import stickimg
from devtools.tiny_pe import tiny_pe
from tests.service.conftest import Sim
from tests.unit.test_kernel_signer import cert_of, efivars, make_pair, signed_pe

A, B = SlotName.A, SlotName.B
INVALID_ARGUMENT = 4
# PE files, as the updater checks a UKI's Secure Boot signer in its PE headers
UKI_A, UKI_B = tiny_pe(b"kernel of slot A" * 3000), tiny_pe(b"kernel of slot B" * 4000)


def esp_booting_a(sim: Sim, tmp_path: Path) -> Path:
    """The sim stick's ESP as anklume-image leaves it: A's UKI and A's menu."""
    assert sim.stick is not None
    device = sim.stick.part(1)
    (tmp_path / "a.efi").write_bytes(UKI_A)
    esp = Esp(device)
    esp.make_dirs("EFI", be.UKI_DIR)
    subprocess.run(["mcopy", "-i", str(device), str(tmp_path / "a.efi"),
                    f"::/{be.uki_path(A)}"], check=True)
    uuid = stickimg.partuuid(sim.stick.persist)
    esp.apply(be.plan([], be.wanted_entries(A, {A}, 3, uuid), keep_counter=False))
    return device


def bundle_of(sim: Sim, tmp_path: Path, uki: bytes | None) -> Path:
    key = tmp_path / "builder.pem"
    if not key.exists():
        public = bundle.generate_key(key)
        keys = sim.workdir / "keys"
        keys.mkdir(exist_ok=True)
        public.rename(keys / "builder.pem")
    image = stickimg.make_squashfs(tmp_path / "os-2.squashfs", "2.0.0", uki=uki)
    copy = tmp_path / "uki-copy.efi"
    if uki is not None:
        copy.write_bytes(uki)
    m = bundle.create_bundle(image, tmp_path / "bundle", version="2.0.0",
                             compatible="anklume-live-amd64", signing_key=key,
                             uki=(be.UKI_IN_IMAGE, copy) if uki is not None else None)
    return tmp_path / "bundle" / m.image.replace(".squashfs", ".manifest")


def test_the_bundles_kernel_reaches_the_esp_and_the_menu_boots_it(
        sim: Sim, tmp_path: Path) -> None:
    device = esp_booting_a(sim, tmp_path)
    done = sim.ctl("update", str(bundle_of(sim, tmp_path, UKI_B)))
    assert done.returncode == 0, done.stderr
    assert "boot menu was not updated" not in done.stdout
    out = tmp_path / "b.efi"
    subprocess.run(["mcopy", "-i", str(device), f"::/{be.uki_path(B)}", str(out)], check=True)
    assert out.read_bytes() == UKI_B
    assert sim.stick is not None
    uuid = stickimg.partuuid(sim.stick.persist)
    assert sorted(Esp(device).entries()) == sorted(be.wanted_entries(B, {A, B}, 3, uuid))
    assert sim.status()["PrimarySlot"] == "B"


def test_a_bundle_without_a_kernel_is_refused_on_a_stick_of_kernels(
        sim: Sim, tmp_path: Path) -> None:
    device = esp_booting_a(sim, tmp_path)
    before = sim.persist_files()
    (tmp_path / "other").mkdir()
    (tmp_path / "same").mkdir()
    refused = sim.ctl("update", str(bundle_of(sim, tmp_path, None)))
    assert refused.returncode == INVALID_ARGUMENT, refused.stderr
    assert "carries no kernel" in refused.stderr
    assert sim.persist_files() == before
    assert Esp(device).listing(be.UKI_DIR) == ["slot-a.efi"]


def rename_on_esp(device: Path, old: str, new: str) -> None:
    """What systemd-boot does to the default entry before it starts its UKI."""
    subprocess.run(["mmove", "-i", str(device), f"::/{be.ENTRIES_DIR}/{old}",
                    f"::/{be.ENTRIES_DIR}/{new}"], check=True)


def test_marking_the_boot_good_renews_the_boot_loaders_counter(
        sim: Sim, tmp_path: Path) -> None:
    device = esp_booting_a(sim, tmp_path)
    rename_on_esp(device, "anklume-1-live-a+3-0.conf", "anklume-1-live-a+2-1.conf")
    sim.stop_daemon()
    sim.start_daemon()
    assert "anklume-1-live-a+2-1.conf" in Esp(device).entries()  # a start keeps it used
    done = sim.ctl("mark-good")
    assert done.returncode == 0, done.stderr
    entries = Esp(device).entries()
    assert "anklume-1-live-a+3-0.conf" in entries and "anklume-1-live-a+2-1.conf" not in entries
    assert sim.persist_files()["boot-count"].strip() == "0"


def test_a_rollback_the_boot_loader_made_alone_is_recorded_in_persist(
        sim: Sim, tmp_path: Path) -> None:
    """B's kernel panicked three times: B's initramfs never ran, so only the
    boot loader counted; it then booted slot A's entry (anklume.slot=A, which
    writes nothing). anklumed on A must tell PERSIST."""
    device = esp_booting_a(sim, tmp_path)
    assert sim.ctl("update", str(bundle_of(sim, tmp_path, UKI_B))).returncode == 0
    rename_on_esp(device, "anklume-1-live-b+3-0.conf", "anklume-1-live-b+0-3.conf")
    sim.stop_daemon()
    assert sim.stick is not None
    sim.write_handoff(f"SLOT=A\nBOOT_COUNT=0\nROLLBACK=0\nTORAM=0\nVERITY=unsigned\n"
                      f"BOOT_DISK={sim.stick.loop}\n"
                      f"PERSIST_PARTUUID={stickimg.partuuid(sim.stick.persist)}\n")
    sim.start_daemon()
    files = sim.persist_files()
    assert files["ab-state"].strip() == "A" and files["boot-count"].strip() == "1"
    assert "REASON=boot-loader" in files["last-rollback"] and "FROM=B" in files["last-rollback"]
    assert "STATUS=failed" in files["slots/B.meta"]
    status = sim.status()
    assert (status["PrimarySlot"], status["BootState"]) == ("A", "rolled-back")
    # The menu follows: A's default entry with a fresh counter, B (failed) not offered.
    uuid = stickimg.partuuid(sim.stick.persist)
    assert sorted(Esp(device).entries()) == sorted(be.wanted_entries(A, {A}, 3, uuid))


def test_a_primary_changed_by_hand_on_persist_wins_over_the_esp(
        sim: Sim, tmp_path: Path) -> None:
    device = esp_booting_a(sim, tmp_path)
    assert sim.ctl("update", str(bundle_of(sim, tmp_path, UKI_B))).returncode == 0
    sim.stop_daemon()
    sim.edit_persist({"ab-state": "A\n", "boot-count": "0\n"})  # echo, on another computer
    sim.start_daemon()
    assert sim.stick is not None
    uuid = stickimg.partuuid(sim.stick.persist)
    assert sorted(Esp(device).entries()) == sorted(be.wanted_entries(A, {A, B}, 3, uuid))


def test_under_secure_boot_a_kernel_signed_by_another_key_is_refused_before_the_esp(
        sim: Sim, tmp_path: Path) -> None:
    """The running kernel and the firmware's db know the stick's key; a bundle
    whose UKI another key signed would be refused by the firmware at each
    boot: the update refuses it before the ESP is touched, and one whose UKI
    the stick's key signed goes through (anklumed/slots/kernel_signer.py)."""
    device = esp_booting_a(sim, tmp_path)
    stick_key, other_key = make_pair(tmp_path, "stick"), make_pair(tmp_path, "other")
    shutil.copy(signed_pe(tmp_path, stick_key, "running.efi"), sim.workdir / "running-uki.efi")
    shutil.copytree(efivars(tmp_path, True, [cert_of(stick_key)]), sim.workdir / "efivars")
    (tmp_path / "other").mkdir()
    (tmp_path / "same").mkdir()
    refused = sim.ctl("update", str(bundle_of(
        sim, tmp_path / "other", signed_pe(tmp_path, other_key, "other.efi").read_bytes())))
    assert refused.returncode == EXIT_CODES["VerificationFailed"], refused.stderr
    assert "signed by CN=other: this machine starts with Secure Boot on" in refused.stderr
    assert Esp(device).listing(be.UKI_DIR) == ["slot-a.efi"]
    assert sim.status()["PrimarySlot"] == "A"
    signed = signed_pe(tmp_path, stick_key, "next.efi").read_bytes()
    done = sim.ctl("update", str(bundle_of(sim, tmp_path / "same", signed)))
    assert done.returncode == 0, done.stderr
    assert sim.status()["PrimarySlot"] == "B"


def test_only_a_uki_with_profiles_gets_entries_naming_one(tmp_path: Path) -> None:
    """systemd-stub refuses an ``@N`` its UKI lacks: anklumed reads each UKI's
    PE section table on the ESP (its first bytes only) before it writes the
    menu. A's UKI is one made before the profiles; B's has them, behind a
    payload long enough that only its head is read."""
    fat = tmp_path / "esp.img"
    subprocess.run(["mkfs.vfat", "-C", str(fat), "8192"], check=True, capture_output=True)
    esp = Esp(fat)
    esp.make_dirs("EFI", be.UKI_DIR)
    with_profile = tiny_pe(b"kernel of slot B" * 20000).replace(b".text\0\0\0", b".profile", 1)
    for slot, uki in ((A, UKI_A), (B, with_profile)):
        (tmp_path / "uki.efi").write_bytes(uki)
        subprocess.run(["mcopy", "-o", "-i", str(fat), str(tmp_path / "uki.efi"),
                        f"::/{be.uki_path(slot)}"], check=True)
    assert esp.slots_with_profiles() == {B}
    wanted = be.wanted_entries(A, esp.slots_with_kernel(), 3, "uuid", (),
                               esp.slots_with_profiles())
    assert "options @" not in wanted["anklume-1-live-a+3-0.conf"]
    assert "options @3 boot=anklume" in wanted["anklume-2-slot-b.conf"]
