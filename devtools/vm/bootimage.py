"""What the boot tests boot: our initramfs, tiny slot images, a signed stick.

- ``build_initramfs``: real initramfs-tools (``mkinitramfs``) with our hook
  and boot script, against the VM tier's cached Debian kernel. mkinitramfs
  reads modules from /lib/modules/VERSION only, so it runs in a private mount
  namespace where the cached tree is bound there; this machine's own
  /lib/modules is never touched.
- ``make_rootfs``: a squashfs whose /sbin/init is busybox and a script
  (``boot-guest-init.sh``) that writes its verdict (the hand-off, the slot,
  what it read) to a results disk the host reads after the run.
- ``build_stick``: a GPT stick whose two slots hold such images, installed
  from bundles made and signed by anklume-bundle's own code, with PERSIST
  written by anklumed's own functions (the updater's ``activate``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from anklumed.persist import PersistDir
from anklumed.slots import bundle, model, update
from anklumed.slots.verity_tree import VerityHasher
from anklumed.stick import SlotName
from devtools import stickimg
from devtools.vm.guest import RUN_PARENT
from devtools.vm.kernel import CACHE, HERE, Kernel

CHECKOUT = HERE.parent.parent
# Another tree of the boot scripts can be built (a test of a test: a copy
# with a check taken out must fail the boot tests).
INITRAMFS_DIR = Path(os.environ.get("ANKLUME_BOOT_INITRAMFS_DIR", CHECKOUT / "initramfs"))
GUEST_INIT = HERE / "boot-guest-init.sh"

# Only the test machine's needs: the virtio disks and port the guest reports
# through. The hook itself adds what a stick boot needs.
TEST_MODULES = ["virtio_pci", "virtio_blk", "virtio_console"]
INITRAMFS_CONF = """\
MODULES=list
BUSYBOX=y
COMPRESS=gzip
COMPRESSLEVEL=1
RESUME=none
FSTYPE=ext4
"""


def _inputs_key(keys_dir: Path | None, state: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(INITRAMFS_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(INITRAMFS_DIR).as_posix().encode() + path.read_bytes())
    digest.update(state.read_bytes() + INITRAMFS_CONF.encode() + " ".join(TEST_MODULES).encode())
    for key in sorted(keys_dir.glob("*.pem")) if keys_dir else []:
        digest.update(key.read_bytes())
    return digest.hexdigest()[:16]


def build_initramfs(kernel: Kernel, keys_dir: Path | None, cache: Path = CACHE) -> Path:
    """Our initramfs for ``kernel``, with the keys of ``keys_dir`` (None: unsigned)."""
    state = INITRAMFS_DIR / "anklume-state.sh"
    dest = cache / f"anklume-boot-{kernel.version}-{_inputs_key(keys_dir, state)}.img"
    if dest.exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src, conf, nokeys = work / "src", work / "conf", work / "nokeys"
        for d in (src, conf / "hooks", conf / "scripts/init-top", conf / "conf.d", nokeys):
            d.mkdir(parents=True)
        for name in ("anklume-boot.sh", "anklume-redirect.sh", "anklume-shutdown.sh"):
            shutil.copy2(INITRAMFS_DIR / name, src / name)
        shutil.copy2(state, src / "anklume-state.sh")
        shutil.copy2(INITRAMFS_DIR / "initramfs-tools/hooks/anklume", conf / "hooks/anklume")
        shutil.copy2(INITRAMFS_DIR / "initramfs-tools/scripts/anklume",
                     conf / "scripts/anklume")
        shutil.copy2(INITRAMFS_DIR / "initramfs-tools/scripts/init-top/anklume",
                     conf / "scripts/init-top/anklume")
        (conf / "initramfs.conf").write_text(INITRAMFS_CONF)
        (conf / "modules").write_text("\n".join(TEST_MODULES) + "\n")
        partial = dest.with_suffix(".partial")
        moddir = f"/lib/modules/{kernel.version}"
        script = (f"set -e; mount -t tmpfs tmpfs /lib/modules; mkdir {moddir}; "
                  f"mount --bind {kernel.modules} {moddir}; "
                  f"mount --bind {kernel.root / 'boot'} /boot; "
                  f"mkinitramfs -d {conf} -o {partial} {kernel.version}")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "ANKLUME_INITRAMFS_SRC": str(src),
               "ANKLUME_KEYS_DIR": str(keys_dir or nokeys)}
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"mkinitramfs failed: {proc.stderr[-2000:]}")
        partial.rename(dest)
    return dest


def make_rootfs(dest: Path, version: str, filler: int = 1 << 20) -> Path:
    """A tiny bootable system: static busybox, our test init, a release file
    and ``filler`` random bytes whose sha256 the image carries (read after a
    stick pull, they prove the system still reads its blocks)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "mnt"):
            (root / d).mkdir(parents=True)
        busybox = shutil.which("busybox") or "/bin/busybox"
        shutil.copy2(busybox, root / "bin" / "busybox")
        shutil.copy2(GUEST_INIT, root / "sbin" / "init")
        (root / "sbin" / "init").chmod(0o755)
        (root / "etc" / "anklume-release").write_text(f"VERSION={version}\n")
        data = os.urandom(filler)
        (root / "filler").write_bytes(data)
        (root / "etc" / "filler.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
        stickimg.sh("mksquashfs", root, dest, "-quiet", "-noappend", "-all-root",
                    "-comp", "gzip")
    return dest


@dataclass(frozen=True)
class SlotBundle:
    manifest: bundle.Manifest
    image: Path
    manifest_path: Path

    @property
    def signature_path(self) -> Path:
        return self.manifest_path.with_name(self.manifest_path.name + ".sig")


def make_bundle(work: Path, version: str, signing_key: Path | None,
                filler: int = 1 << 20) -> SlotBundle:
    """A slot bundle of a tiny system, made by anklume-bundle's code."""
    work.mkdir(parents=True, exist_ok=True)
    image = make_rootfs(work / f"os-{version}.squashfs", version, filler)
    out = work / f"bundle-{version}"
    m = bundle.create_bundle(image, out, version=version, compatible=bundle.COMPATIBLE,
                             signing_key=signing_key)
    return SlotBundle(m, out / m.image, out / m.image.replace(".squashfs", ".manifest"))


def verity_tree(b: SlotBundle) -> bytes:
    """The tree as ``veritysetup format`` writes it, by the updater's own hasher."""
    hasher = VerityHasher(b.manifest.verity_params())
    data = b.image.read_bytes()
    hasher.update(data)
    hasher.update(b"\0" * (-len(data) % b.manifest.data_block_size))
    result = hasher.finish()
    assert result.root_hash == b.manifest.root_hash
    return result.tree


def install_slot(stick: stickimg.Stick, pdir: PersistDir, slot: SlotName,
                 b: SlotBundle) -> None:
    """What a finished update leaves: the image on the partition (zero-padded
    to a whole block), then PERSIST's tree, meta, manifest and signature."""
    data = b.image.read_bytes()
    data += b"\0" * (-len(data) % b.manifest.data_block_size)
    with stickimg_part(stick, slot).open("r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    record_slot(pdir, slot, b)


def record_slot(pdir: PersistDir, slot: SlotName, b: SlotBundle) -> None:
    """PERSIST's half of an installed slot (tree, meta, manifest, signature),
    as the updater's ``activate`` writes it after the image."""
    update.activate(pdir, slot, b.manifest, bundle.KeptManifest.beside(b.manifest_path),
                    verity_tree(b), "image-builder", datetime.now(UTC))


def filler_offset(b: SlotBundle, into: int) -> int:
    """Where in the slot's image byte ``into`` of /filler lies: a block the
    boot itself never reads (random data: mksquashfs stores it as it is)."""
    filler = subprocess.run(["unsquashfs", "-cat", str(b.image), "filler"],
                            capture_output=True, check=True).stdout
    probe = filler[into:into + 512]
    offset = b.image.read_bytes().find(probe)
    if offset < 0:
        raise RuntimeError(f"/filler's bytes are not stored as they are in {b.image}")
    return offset


def stickimg_part(stick: stickimg.Stick, slot: SlotName) -> Path:
    return stick.part(2 if slot is SlotName.A else 3)


def attach(image: Path) -> stickimg.Stick:
    """stickimg.attach, and every partition's node there (devtmpfs makes
    them one by one, asynchronously)."""
    stick = stickimg.attach(image)
    for _ in range(250):
        if all(stick.part(n).exists() for n in (1, 2, 3, 4)):
            return stick
        time.sleep(0.02)
    stick.detach()
    raise RuntimeError(f"the partitions of {image} did not appear on {stick.loop}")


def build_stick(image: Path, slot_a: SlotBundle, slot_b: SlotBundle | None,
                slot_mib: int = 16) -> Path:
    """A stick image: B installed first (if any), then A, so A is primary with
    boot-count 0, as after an update to A; the loop device is detached again."""
    stickimg.write_gpt(image, slot_mib, persist_mib=16)
    stick = attach(image)
    mnt = Path(tempfile.mkdtemp(prefix="anklume-boot-persist-", dir=RUN_PARENT))
    try:
        stickimg.sh("mkfs.vfat", "-n", "ANKLUME-EFI", stick.part(1))
        stickimg.sh("mkfs.ext4", "-q", "-F", "-L", "ANKLUME-PERSIST", stick.persist)
        stickimg.sh("mount", stick.persist, mnt)
        try:
            pdir = PersistDir(mnt)
            (mnt / "slots").mkdir()
            model.write_meta(pdir, SlotName.B, model.SlotMeta())
            if slot_b is not None:
                install_slot(stick, pdir, SlotName.B, slot_b)
            install_slot(stick, pdir, SlotName.A, slot_a)
        finally:
            stickimg.sh("umount", mnt)
    finally:
        mnt.rmdir()
        stick.detach()
    return image
