"""The initramfs boots a real stick: Debian's kernel, our mkinitramfs image.

Each test builds a stick image here (GPT, two slots holding tiny busybox
systems from signed bundles, PERSIST written by anklumed's own code), boots
it in QEMU from a USB disk and reads what the booted system reported (a
results disk) and what the boot left on PERSIST. The tiny system never marks
its boot good: every boot is an attempt that did not complete.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from anklumed.persist import PersistDir
from anklumed.slots import bundle, model
from anklumed.stick import SlotName
from devtools import stickimg
from devtools.vm import bootimage, bootrun
from devtools.vm.guest import RUN_PARENT
from devtools.vm.kernel import Kernel, ensure_kernel

pytestmark = pytest.mark.vm(mode="host")

STICK = bootrun.STICK_SERIAL


@dataclass(frozen=True)
class Kit:
    kernel: Kernel
    initrd: Path            # with the builder's public key
    work: Path
    slot_a: bootimage.SlotBundle
    slot_b: bootimage.SlotBundle
    builder_key: Path

    def stick(self, name: str) -> Path:
        return bootimage.build_stick(self.work / f"{name}.img", self.slot_a, self.slot_b)

    def boot(self, *sticks: Path, cmdline: str = "", memory_mb: int = 512,
             initrd: Path | None = None) -> bootrun.BootResult:
        serials = [(STICK if i == 0 else f"{STICK}-{i}", s) for i, s in enumerate(sticks)]
        return bootrun.boot(self.kernel, initrd or self.initrd, serials, cmdline=cmdline,
                            memory_mb=memory_mb, timeout=240)

    def boot_cut(self, stick: Path, cut_power: tuple[str, float]) -> bootrun.BootResult:
        """A boot whose power is cut that many seconds after the console shows the text."""
        return bootrun.boot(self.kernel, self.initrd, [(STICK, stick)], timeout=240,
                            cut_power=cut_power)

    def boot_pulled(self, stick: Path, text: str, cmdline: str,
                    replug_after: float | None = None) -> bootrun.BootResult:
        """A boot whose stick is pulled when the console shows ``text`` (and
        plugged back in ``replug_after`` seconds later)."""
        pull = bootrun.Pull(text, STICK, replug_after, stick)
        return bootrun.boot(self.kernel, self.initrd, [(STICK, stick)], cmdline=cmdline,
                            timeout=240, pull=pull)


@pytest.fixture(scope="module")
def kit() -> Iterator[Kit]:
    work = Path(tempfile.mkdtemp(prefix="anklume-boot-test-", dir=RUN_PARENT))
    try:
        keys = work / "keys"
        keys.mkdir()
        bundle.generate_key(work / "builder.pem").rename(keys / "builder.pem")
        kernel = ensure_kernel()
        yield Kit(kernel=kernel, initrd=bootimage.build_initramfs(kernel, keys), work=work,
                  slot_a=bootimage.make_bundle(work, "1.0.0", work / "builder.pem"),
                  slot_b=bootimage.make_bundle(work, "2.0.0", work / "builder.pem"),
                  builder_key=work / "builder.pem")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def persist(image: Path, name: str) -> str:
    """A PERSIST file as the next boot reads it: mounted, its journal replayed
    (debugfs would read the blocks as they are, before the replay)."""
    with persist_dir(image) as pdir:
        return pdir.read_text(name) or ""


@contextmanager
def persist_dir(image: Path) -> Iterator[PersistDir]:
    """PERSIST of a stick image mounted here, for a test to alter."""
    stick = bootimage.attach(image)
    try:
        with persist_dir_attached(stick) as pdir:
            yield pdir
    finally:
        stick.detach()


def flip_byte(image: Path, slot: SlotName, offset: int) -> None:
    stick = bootimage.attach(image)
    try:
        with bootimage.stickimg_part(stick, slot).open("r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x01]))
    finally:
        stick.detach()


def booted(result: bootrun.BootResult) -> dict[str, str]:
    assert result.report is not None, result.explain()
    return result.report


def test_a_normal_boot_counts_and_is_signed(kit: Kit) -> None:
    image = kit.stick("normal")
    result = kit.boot(image)
    report = booted(result)
    assert (report["SLOT"], report["BOOT_COUNT"], report["VERITY"]) == ("A", "1", "signed")
    assert report["RELEASE"] == "VERSION=1.0.0" and report["FILLER"] == "ok"
    assert report["ROOT_FS"] == "overlay" and "anklume-root" in report["MAPPINGS"]
    assert report["ROOT_HASH"] == kit.slot_a.manifest.root_hash
    assert report["PERSIST_MOUNTED"] == "0" and report["BOOT_DISK"] == "/dev/sda"
    assert (report["ROLLBACK"], report["TORAM"], report["DEGRADED"]) == ("0", "0", "0")
    assert report["RAM_CRYPT"] in ("active", "inactive", "unknown")
    assert persist(image, "boot-count").strip() == "1"
    assert "anklume: slot A, attempt 1" in result.console
    shutil.rmtree(result.rundir)


def test_three_failed_boots_roll_back_to_the_other_slot(kit: Kit) -> None:
    image = kit.stick("rollback")
    for attempt in (1, 2, 3):
        report = booted(kit.boot(image))
        assert (report["SLOT"], report["BOOT_COUNT"]) == ("A", str(attempt))
    result = kit.boot(image)
    report = booted(result)
    assert (report["SLOT"], report["BOOT_COUNT"], report["ROLLBACK"]) == ("B", "1", "1")
    assert report["ROLLBACK_FROM"] == "A" and report["RELEASE"] == "VERSION=2.0.0"
    assert persist(image, "ab-state").strip() == "B"
    assert "REASON=boot-count" in persist(image, "last-rollback")
    shutil.rmtree(result.rundir)


def test_a_flipped_byte_falls_through_to_the_other_slot_in_the_same_boot(kit: Kit) -> None:
    image = kit.stick("flipped")
    # A byte of the first block: the squashfs superblock, read by the mount.
    flip_byte(image, SlotName.A, random.Random(12).randrange(0, 4096))
    result = kit.boot(image)
    report = booted(result)
    assert (report["SLOT"], report["BOOT_COUNT"], report["VERITY"]) == ("B", "1", "signed")
    assert report["RELEASE"] == "VERSION=2.0.0" and report["ROLLBACK_FROM"] == "A"
    assert "slot A refused (verity); trying slot B" in result.console
    assert "REASON=verity" in persist(image, "last-rollback")
    assert persist(image, "ab-state").strip() == "B"
    shutil.rmtree(result.rundir)


def test_a_flipped_byte_the_boot_never_reads_is_caught_when_read(kit: Kit) -> None:
    """dm-verity checks a block when it is read: a byte of /filler, which
    nothing reads before the system runs, is found by the read, not the boot."""
    image = kit.stick("flipped-late")
    flip_byte(image, SlotName.A, bootimage.filler_offset(kit.slot_a, 300_000))
    result = kit.boot(image)
    report = booted(result)
    assert (report["SLOT"], report["ROLLBACK"], report["TORAM"]) == ("A", "0", "0")
    # The read fails (EIO): the changed bytes never reach the program.
    assert report["FILLER"] == "unreadable" and int(report["CORRUPTED_BLOCKS"]) >= 1, report
    shutil.rmtree(result.rundir)


@pytest.mark.parametrize("forged", ["meta-and-tree", "whole-bundle"])
def test_a_persist_pointing_at_another_image_is_refused(kit: Kit, forged: str) -> None:
    """Slot A's partition holds another image, PERSIST its tree and root hash;
    with its own manifest signed by a key the initramfs does not carry too
    (whole-bundle), or under slot A's genuine signed manifest (meta-and-tree)."""
    image = kit.stick(f"forged-{forged}")
    evil_key = kit.work / f"evil-{forged}.pem"
    bundle.generate_key(evil_key)
    evil = bootimage.make_bundle(kit.work / f"evil-{forged}", "1.0.1", evil_key)
    stick = bootimage.attach(image)
    try:
        with persist_dir_attached(stick) as pdir:
            bootimage.install_slot(stick, pdir, SlotName.A, evil)
            if forged == "meta-and-tree":
                pdir.write_bytes("slots/A.manifest", kit.slot_a.manifest_path.read_bytes())
                pdir.write_bytes("slots/A.manifest.sig", kit.slot_a.signature_path.read_bytes())
    finally:
        stick.detach()
    result = kit.boot(image)
    report = booted(result)
    reason = "root-hash" if forged == "meta-and-tree" else "signature"
    assert (report["SLOT"], report["RELEASE"]) == ("B", "VERSION=2.0.0")
    assert f"slot A refused ({reason}); trying slot B" in result.console
    assert f"REASON={reason}" in persist(image, "last-rollback")
    shutil.rmtree(result.rundir)


@contextmanager
def persist_dir_attached(stick: stickimg.Stick) -> Iterator[PersistDir]:
    mnt = Path(tempfile.mkdtemp(prefix="anklume-boot-persist-", dir=RUN_PARENT))
    try:
        stickimg.sh("mount", stick.persist, mnt)
        try:
            yield PersistDir(mnt)
        finally:
            stickimg.sh("umount", mnt)
    finally:
        mnt.rmdir()


def test_toram_survives_the_stick_being_pulled(kit: Kit) -> None:
    image = kit.stick("toram")
    result = kit.boot(image, cmdline="anklume.toram=1 anklume.test=pull")
    report = booted(result)
    assert (report["SLOT"], report["TORAM"], report["VERITY"]) == ("A", "1", "signed")
    assert "[OK] OS copied to RAM, USB can be safely removed" in result.console
    assert report["PULL"] == "ok" and report["STICK_GONE"] == "1"
    assert report["FILLER_AFTER_PULL"] == "ok"
    assert report["RELEASE_AFTER_PULL"] == "VERSION=1.0.0"
    shutil.rmtree(result.rundir)


def test_toram_without_enough_ram_boots_from_the_stick(kit: Kit) -> None:
    image = kit.stick("toram-small")
    result = kit.boot(image, cmdline="anklume.toram=1", memory_mb=256)
    report = booted(result)
    assert (report["SLOT"], report["TORAM"]) == ("A", "0")
    assert "not enough RAM to copy the system" in result.console
    shutil.rmtree(result.rundir)


def test_both_slots_exhausted_boot_the_last_good_one_degraded(kit: Kit) -> None:
    image = kit.stick("degraded")
    with persist_dir(image) as pdir:
        meta = model.read_slots_state(pdir).meta[SlotName.B]
        model.write_meta(pdir, SlotName.B, meta.model_copy(
            update={"status": model.SlotStatus.FAILED}))
        model.write_boot_count(pdir, 3)
    result = kit.boot(image)
    report = booted(result)
    assert (report["SLOT"], report["BOOT_COUNT"], report["DEGRADED"]) == ("A", "4", "1")
    assert "degraded" in result.console
    shutil.rmtree(result.rundir)


@pytest.mark.parametrize("missing", ["verity", "manifest"])
def test_a_slot_missing_its_tree_or_manifest_falls_through(kit: Kit, missing: str) -> None:
    image = kit.stick(f"missing-{missing}")
    with persist_dir(image) as pdir:
        pdir.remove(f"slots/A.{missing}")
        # Garbage a person may have typed: the safe defaults apply (A, count 0).
        pdir.write_text("ab-state", "Z\n")
        pdir.write_text("boot-count", "x1")
    result = kit.boot(image)
    report = booted(result)
    reason = "missing-tree" if missing == "verity" else "missing-manifest"
    assert (report["SLOT"], report["BOOT_COUNT"]) == ("B", "1")
    assert f"slot A refused ({reason}); trying slot B" in result.console
    shutil.rmtree(result.rundir)


def test_without_keys_the_boot_still_uses_verity_and_says_unsigned(kit: Kit) -> None:
    image = kit.stick("unsigned")
    result = kit.boot(image, initrd=bootimage.build_initramfs(kit.kernel, None))
    report = booted(result)
    assert (report["SLOT"], report["VERITY"], report["FILLER"]) == ("A", "unsigned", "ok")
    assert "anklume-root" in report["MAPPINGS"]
    shutil.rmtree(result.rundir)


def test_the_shutdown_returns_to_the_initramfs_and_releases_the_root(kit: Kit) -> None:
    image = kit.stick("shutdown")
    result = kit.boot(image, cmdline="anklume.toram=1 anklume.test=shutdown")
    report = booted(result)
    assert report["TORAM"] == "1"
    assert ("anklume shutdown: root released (0 mounts left, 0 anklume mappings left); "
            "poweroff") in result.console, result.explain()
    shutil.rmtree(result.rundir)


def test_two_sticks_never_mix(kit: Kit) -> None:
    first, second = kit.stick("two-1"), kit.stick("two-2")
    uuids = sorted(stickimg_partuuid(s) for s in (first, second))
    result = kit.boot(first, second)
    report = booted(result)
    assert report["PERSIST_PARTUUID"] == uuids[0]
    assert f"2 anklume sticks are plugged in; booting the one whose PERSIST is " \
           f"PARTUUID={uuids[0]}" in result.console
    shutil.rmtree(result.rundir)
    result = kit.boot(first, second, cmdline=f"anklume.persist=PARTUUID={uuids[1].upper()}")
    report = booted(result)
    assert report["PERSIST_PARTUUID"] == uuids[1]
    assert "sticks are plugged in" not in result.console
    counts = {stickimg_partuuid(s): persist(s, "boot-count").strip() for s in (first, second)}
    assert counts == {uuids[0]: "1", uuids[1]: "1"}
    shutil.rmtree(result.rundir)


def stickimg_partuuid(image: Path) -> str:
    stick = bootimage.attach(image)
    try:
        return stickimg.partuuid(stick.persist)
    finally:
        stick.detach()


def test_no_stick_says_so_within_the_wait_and_never_hangs(kit: Kit) -> None:
    result = kit.boot(cmdline="anklume.wait=5")
    assert result.report is None and not result.timed_out, result.explain()
    assert "waiting up to 5 s for the anklume stick" in result.console
    assert "no stick with an ANKLUME-PERSIST partition appeared within 5 s" in result.console
    shutil.rmtree(result.rundir)


def test_no_verifiable_slot_says_what_failed_then_gives_a_shell(kit: Kit) -> None:
    image = kit.stick("both-bad")
    flip_byte(image, SlotName.A, 100)
    flip_byte(image, SlotName.B, 100)
    result = kit.boot(image)
    assert result.report is None and not result.timed_out, result.explain()
    assert "no anklume slot could be verified: slot A: verity; slot B: verity;" in result.console
    assert "A shell follows" in result.console
    # The state files are whole: B was made primary by the fall-through from A.
    assert persist(image, "ab-state").strip() in ("A", "B")
    assert persist(image, "boot-count").strip().isdigit()
    shutil.rmtree(result.rundir)


def pulled_stick(kit: Kit, name: str) -> Path:
    """A stick whose slot A takes a while to copy (48 MiB under TCG)."""
    big = bootimage.make_bundle(kit.work / name, "1.1.0", kit.builder_key, filler=48 << 20)
    return bootimage.build_stick(kit.work / f"{name}.img", big, kit.slot_b, slot_mib=56)


def test_the_stick_pulled_during_the_toram_copy_is_said_and_never_hangs(kit: Kit) -> None:
    image = pulled_stick(kit, "pulled")
    result = kit.boot_pulled(image, "[INFO] Copying squashfs to RAM",
                             "anklume.toram=1 anklume.wait=5")
    assert result.report is None and not result.timed_out, result.explain()
    assert "the stick was removed during the copy to RAM" in result.console, result.explain()
    assert "plug the stick back in" in result.console
    assert "the stick was removed during the copy to RAM and did not come back within 5 s" \
        in result.console
    shutil.rmtree(result.rundir)


def test_the_stick_pulled_during_the_toram_copy_and_plugged_back_boots_from_it(
        kit: Kit) -> None:
    image = pulled_stick(kit, "replugged")
    result = kit.boot_pulled(image, "[INFO] Copying squashfs to RAM", "anklume.toram=1",
                             replug_after=3)
    report = booted(result)
    assert (report["SLOT"], report["TORAM"], report["BOOT_COUNT"]) == ("A", "0", "1")
    assert report["RELEASE"] == "VERSION=1.1.0" and report["FILLER"] == "ok"
    assert "the stick was removed during the copy to RAM" in result.console, result.explain()
    assert "plug the stick back in" in result.console
    assert "refused" not in result.console  # no slot counted as failed
    assert persist(image, "boot-count").strip() == "1"
    shutil.rmtree(result.rundir)


def test_a_slot_shorter_than_its_meta_size_falls_through(kit: Kit) -> None:
    """Slot A's PERSIST half is a genuine signed bundle too big for its
    partition (a stick made for larger slots, or a cut-short write)."""
    big = bootimage.make_bundle(kit.work / "short", "1.2.0", kit.builder_key, filler=20 << 20)
    image = kit.stick("short-slot")  # slots of 16 MiB
    with persist_dir(image) as pdir:
        bootimage.record_slot(pdir, SlotName.A, big)
    result = kit.boot(image, cmdline="anklume.toram=1")
    report = booted(result)
    assert (report["SLOT"], report["RELEASE"], report["VERITY"]) == ("B", "VERSION=2.0.0",
                                                                     "signed")
    assert "slot A refused (short-slot); trying slot B" in result.console, result.explain()
    assert "REASON=short-slot" in persist(image, "last-rollback")
    shutil.rmtree(result.rundir)


def test_ram_crypt_is_reported_as_the_kernel_says_never_claimed(kit: Kit) -> None:
    image = kit.stick("ram-crypt")
    result = kit.boot(image, cmdline="anklume.ram_crypt=1")
    report = booted(result)
    # QEMU's TCG CPU has neither AMD SME nor Intel TME: nothing encrypts memory.
    assert report["RAM_CRYPT"] == "inactive", report
    assert "anklume: memory encryption: inactive" in result.console, result.explain()
    assert "memory encryption: active" not in result.console
    shutil.rmtree(result.rundir)
