"""The updater's ESP writes cut at each step, on a real FAT filesystem on a loop device.

The ESP of a stick booted by slot A (A's UKI and menu, docs/boot-chain.md)
takes slot B's UKI, read out of a real squashfs by the updater's own
``install_kernel``, then the menu for B. The writer dies before step k (each
step is one mtools command flushed to the device, so a power cut falls
between steps): the filesystem must be clean for fsck.vfat, the entry
systemd-boot would boot first must name a UKI that is there whole, and that
UKI must be A's until PERSIST names B (the kernel steps come before the
activation); a retry must then finish the job.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anklumed.slots import boot_entries as be
from anklumed.slots.bundle import Manifest
from anklumed.slots.esp import Esp
from anklumed.slots.update import install_kernel
from anklumed.stick import SlotName
from devtools import stickimg

A, B = SlotName.A, SlotName.B
UUID = "0b4c6c8e-1111-2222-3333-444455556666"
UKI_A = b"MZ slot A kernel " * 40000  # ~680 KiB each: several clusters
UKI_B = b"MZ slot B kernel!" * 50000


class Cut(Exception):
    """The power went out before this step."""


class CutBefore:
    """A step hook that lets ``k`` steps run and cuts before the next."""

    def __init__(self, k: int) -> None:
        self.left = k

    def __call__(self, step: str) -> None:
        if self.left == 0:
            raise Cut(step)
        self.left -= 1


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def loop_esp(tmp_path: Path) -> Iterator[Path]:
    image = tmp_path / "esp.img"
    sh("mkfs.vfat", "-C", "-n", "ANKLUME-EFI", image, str(16 * 1024))
    device = stickimg.find_loop(image)
    try:
        # A loop device just attached may read as empty for a moment
        # (mtools: "could not read boot sector"): wait for its size.
        deadline = time.monotonic() + 10
        while int(sh("blockdev", "--getsize64", device)) != image.stat().st_size:
            assert time.monotonic() < deadline, f"{device} never showed its size"
            time.sleep(0.05)
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


def stick_booting_a(device: Path, tmp_path: Path) -> None:
    """What anklume-image writes: slot A's UKI and A's menu."""
    esp = Esp(device)
    esp.make_dirs("EFI", be.UKI_DIR)
    (tmp_path / "a.efi").write_bytes(UKI_A)
    sh("mcopy", "-i", device, tmp_path / "a.efi", f"::/{be.uki_path(A)}")
    esp.apply(be.plan([], be.wanted_entries(A, {A}, 3, UUID), keep_counter=False))


def slot_b(tmp_path: Path) -> tuple[Path, Manifest]:
    """A squashfs carrying B's UKI where the image carries it, and the
    manifest keys that pin it."""
    root = tmp_path / "root-b"
    uki = root / be.UKI_IN_IMAGE
    uki.parent.mkdir(parents=True)
    uki.write_bytes(UKI_B)
    image = tmp_path / "b.squashfs"
    sh("mksquashfs", root, image, "-quiet", "-noappend")
    manifest = Manifest(format=1, compatible="x", version="2.0", image="b.squashfs", size=1,
                        sha256="0" * 64, root_hash="00", salt="00", uki=be.UKI_IN_IMAGE,
                        uki_size=len(UKI_B), uki_sha256=hashlib.sha256(UKI_B).hexdigest())
    return image, manifest


def update_esp(esp: Esp, slot_image: Path, manifest: Manifest) -> None:
    """The updater's ESP steps, in its order; PERSIST's activation (not
    modelled here) falls between the kernel and the menu."""
    install_kernel(esp, slot_image, B, manifest)
    esp.apply(be.plan(esp.entries(), be.wanted_entries(B, esp.slots_with_kernel(), 3, UUID),
                      keep_counter=False))


def first_entry(device: Path) -> tuple[str, str]:
    """The entry systemd-boot boots (sort-key order, no tries left last,
    then the higher id) and the UKI path it names."""
    found = []
    for name in Esp(device).entries():
        text = sh("mtype", "-i", device, f"::/{be.ENTRIES_DIR}/{name}")
        fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
        default = be.parse_default(name)
        found.append(((default is not None and default.counter.exhausted, fields["sort-key"]),
                      name, fields["linux"].lstrip("/")))
    found.sort(key=lambda f: f[1], reverse=True)  # ties: the higher id first
    found.sort(key=lambda f: f[0])
    assert found, "no boot entry is left"
    return found[0][1], found[0][2]


def kernel_bytes(device: Path, path: str, tmp_path: Path) -> bytes:
    out = tmp_path / "read.efi"
    out.unlink(missing_ok=True)
    sh("mcopy", "-i", device, f"::/{path}", out)
    return out.read_bytes()


def steps_of(device: Path, tmp_path: Path, slot_image: Path, manifest: Manifest) -> list[str]:
    seen: list[str] = []
    update_esp(Esp(device, seen.append), slot_image, manifest)
    return seen


def test_the_update_writes_the_kernel_then_the_menu(loop_esp: Path, tmp_path: Path) -> None:
    stick_booting_a(loop_esp, tmp_path)
    slot_image, manifest = slot_b(tmp_path)
    steps = steps_of(loop_esp, tmp_path, slot_image, manifest)
    assert steps.index("write uki") < steps.index("rename slot-b.new")
    assert steps.index("rename slot-b.new") < steps.index("write anklume-1-live-b+3-0.conf")
    assert steps[-3:] == ["delete anklume-1-live-a+3-0.conf", "delete anklume-3-stick-a.conf",
                          "delete anklume-4-slot-a.conf"]
    name, uki = first_entry(loop_esp)
    assert (name, uki) == ("anklume-1-live-b+3-0.conf", be.uki_path(B))
    assert kernel_bytes(loop_esp, uki, tmp_path) == UKI_B
    assert sorted(Esp(loop_esp).entries()) == sorted(be.wanted_entries(B, {A, B}, 3, UUID))


def test_a_kernel_that_does_not_match_the_manifest_is_never_put_in_place(
        loop_esp: Path, tmp_path: Path) -> None:
    stick_booting_a(loop_esp, tmp_path)
    slot_image, manifest = slot_b(tmp_path)
    wrong = manifest.model_copy(update={"uki_sha256": "f" * 64})
    with pytest.raises(Exception, match="is not the one the manifest pins"):
        install_kernel(Esp(loop_esp), slot_image, B, wrong)
    assert Esp(loop_esp).listing(be.UKI_DIR) == ["slot-a.efi"]


def test_a_cut_at_each_step_leaves_a_stick_that_boots_and_a_retry_finishes(
        loop_esp: Path, tmp_path: Path) -> None:
    stick_booting_a(loop_esp, tmp_path)
    slot_image, manifest = slot_b(tmp_path)
    image = Path(sh("losetup", "-n", "-O", "BACK-FILE", loop_esp).strip())
    pristine = tmp_path / "pristine.img"
    sh("cp", "--sparse=always", image, pristine)
    steps = steps_of(loop_esp, tmp_path, slot_image, manifest)
    assert len(steps) >= 9
    kernel_steps = steps.index("rename slot-b.new") + 1
    for k, step in enumerate(steps):
        sh("dd", f"if={pristine}", f"of={loop_esp}", "bs=1M", "conv=fsync", "status=none")
        with pytest.raises(Cut):
            update_esp(Esp(loop_esp, CutBefore(k)), slot_image, manifest)
        check = subprocess.run(["fsck.vfat", "-n", str(loop_esp)], capture_output=True,
                               text=True, check=False)
        assert check.returncode == 0, f"cut before {step!r}: {check.stdout}"
        name, uki = first_entry(loop_esp)
        booted = kernel_bytes(loop_esp, uki, tmp_path)
        if k <= kernel_steps:  # PERSIST still names A: A's kernel must boot
            assert booted == UKI_A, f"cut before {step!r}: {name} boots {uki}"
        else:
            assert booted in (UKI_A, UKI_B), f"cut before {step!r}: {uki} is not whole"
        update_esp(Esp(loop_esp), slot_image, manifest)  # the retry
        assert first_entry(loop_esp) == ("anklume-1-live-b+3-0.conf", be.uki_path(B))
        assert sorted(Esp(loop_esp).entries()) == sorted(be.wanted_entries(B, {A, B}, 3, UUID))
        assert kernel_bytes(loop_esp, be.uki_path(B), tmp_path) == UKI_B


# ---- room on the ESP ----------------------------------------------------------------
# mcopy exits 0 when the ESP fills up (it writes what fits): a full ESP once
# read as "the stick may be failing" at the read-back. The test image's
# 128 MiB ESP held A's UKI and B's, so a second update of B (a third UKI,
# its temporary) failed that way.


def small_esp(tmp_path: Path, kib: int) -> Path:
    image = tmp_path / "small-esp.img"
    sh("mkfs.vfat", "-C", "-n", "ANKLUME-EFI", image, str(kib))
    return image


def test_a_slot_updated_again_needs_room_for_two_kernels_not_three(tmp_path: Path) -> None:
    """An ESP that holds A's UKI and B's but not a third: B updated twice
    (its old UKI goes before the new one is written: B is pending)."""
    esp_file = small_esp(tmp_path, 2048)  # A (680 KB) + B (850 KB) fit, a third B does not
    stick_booting_a(esp_file, tmp_path)
    slot_image, manifest = slot_b(tmp_path)
    install_kernel(Esp(esp_file), slot_image, B, manifest)
    install_kernel(Esp(esp_file), slot_image, B, manifest)
    assert sorted(Esp(esp_file).listing(be.UKI_DIR)) == ["slot-a.efi", "slot-b.efi"]
    assert kernel_bytes(esp_file, be.uki_path(B), tmp_path) == UKI_B


def test_an_esp_without_room_for_the_kernel_says_so(tmp_path: Path) -> None:
    esp_file = small_esp(tmp_path, 2048)
    stick_booting_a(esp_file, tmp_path)
    (tmp_path / "filler").write_bytes(bytes(800 * 1024))
    sh("mcopy", "-i", esp_file, tmp_path / "filler", "::/filler")
    slot_image, manifest = slot_b(tmp_path)
    with pytest.raises(Exception, match=r"has no room for slot B's kernel: 0\.8 MiB needed"):
        install_kernel(Esp(esp_file), slot_image, B, manifest)
    assert Esp(esp_file).listing(be.UKI_DIR) == ["slot-a.efi"]
    assert kernel_bytes(esp_file, be.uki_path(A), tmp_path) == UKI_A
