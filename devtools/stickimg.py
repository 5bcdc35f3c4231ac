"""Build a simulated anklume boot stick: a GPT image on a loop device.

Real pieces throughout: sgdisk writes the GPT with the ANKLUME-* names, the
loop device gets its partitions through ``partx -a`` (this kernel parses no
partition table itself), PERSIST is a real ext4, OS-A holds a real squashfs and
PERSIST its dm-verity tree made by ``veritysetup format``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from anklumed.slots.boot_entries import UKI_IN_IMAGE

MiB = 1024 * 1024
# losetup --find takes the lowest free loop device. A test that pulls a disk
# and plugs another in under the same name holds this lock from the pull to
# the plug (loop_names_held), so that a test beside it (pytest -n 2, .ci/run)
# takes another name meanwhile; every --find here (find_loop) takes it too.
LOOP_NAMES_LOCK = Path("/run/lock/anklume-test-loop-names")
_names_held = 0  # by this process: the lock is taken once, released at the outermost


def sh(*argv: str | Path, input: bytes | None = None) -> str:
    proc = subprocess.run([str(a) for a in argv], input=input, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace')[-500:]}")
    return proc.stdout.decode()


@dataclass
class Stick:
    image: Path
    loop: Path

    def part(self, number: int) -> Path:
        return Path(f"{self.loop}p{number}")

    @property
    def persist(self) -> Path:
        return self.part(4)

    def detach(self) -> None:
        detach_if_holding(self.loop, self.image)


@contextmanager
def loop_names_held() -> Iterator[None]:
    """No other test process takes a loop device's name meanwhile."""
    global _names_held
    if _names_held:
        _names_held += 1
        try:
            yield
        finally:
            _names_held -= 1
        return
    LOOP_NAMES_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOOP_NAMES_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _names_held = 1
        try:
            yield
        finally:
            _names_held = 0


def find_loop(image: Path, options: Sequence[str] = ()) -> Path:
    """``image`` on the first free loop device (``options``: losetup's, as
    ``--sector-size 4096``)."""
    with loop_names_held():
        return Path(sh("losetup", "--find", "--show", *options, image).strip())


def backing_file(loop: Path) -> Path | None:
    """The image file ``loop`` holds now; None once it is detached."""
    try:
        text = (Path("/sys/block") / loop.name / "loop" / "backing_file").read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def detach_if_holding(loop: Path, images: Path) -> None:
    """Detach ``loop``, its partitions first, if it holds the image ``images`` or
    one under that directory: a loop detached once (a test pulled it) may be
    another test's disk by now (pytest -n 2), whose partitions partx -d
    would take away under its anklumed."""
    held, images = backing_file(loop), images.resolve()
    if held is None or not (held == images or held.is_relative_to(images)):
        return
    subprocess.run(["partx", "-d", str(loop)], capture_output=True, check=False)
    subprocess.run(["losetup", "-d", str(loop)], capture_output=True, check=False)


def attach_as(loop: Path, image: Path, seconds: float) -> bool:
    """``image`` on ``loop``, a name just freed (the caller holds
    loop_names_held): its detach waits for whoever still has it open (another
    test's anklumed probing the disks), so tried again for ``seconds``."""
    deadline = time.monotonic() + seconds
    while subprocess.run(["losetup", str(loop), str(image)], capture_output=True,
                         check=False).returncode != 0:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def write_gpt(image: Path, slot_mib: int, persist_mib: int, efi_mib: int = 8) -> None:
    size = efi_mib + 2 * slot_mib + persist_mib + 2
    with image.open("wb") as f:
        f.truncate(size * MiB)
    sh("sgdisk", "--clear",
       f"--new=1:0:+{efi_mib}M", "--typecode=1:ef00", "--change-name=1:ANKLUME-EFI",
       f"--new=2:0:+{slot_mib}M", "--typecode=2:8300", "--change-name=2:ANKLUME-OS-A",
       f"--new=3:0:+{slot_mib}M", "--typecode=3:8300", "--change-name=3:ANKLUME-OS-B",
       f"--new=4:0:+{persist_mib}M", "--typecode=4:8300", "--change-name=4:ANKLUME-PERSIST",
       image)


def partuuid(device: Path) -> str:
    return sh("blkid", "-p", "-o", "value", "-s", "PART_ENTRY_UUID", device).strip().lower()


def attach(image: Path) -> Stick:
    loop = find_loop(image)
    try:
        sh("partx", "-a", loop)
    except RuntimeError:
        # A reused loop number can keep stale partitions from its last life
        # (seen here after a detach raced a late opener): update them instead.
        sh("partx", "-u", loop)
    stick = Stick(image=image, loop=loop)
    for _ in range(100):  # devtmpfs creates the nodes asynchronously
        if stick.persist.exists():
            break
        time.sleep(0.02)
    return stick


def blank_disk(image: Path, mib: int) -> Path:
    """A blank sparse disk image on a loop device (the simulated data disk)."""
    with image.open("wb") as f:
        f.truncate(mib * 1024 * 1024)
    return find_loop(image)


def make_squashfs(dest: Path, version: str, filler: int = 0, uki: bytes | None = None) -> Path:
    """A tiny OS image; ``filler`` bytes of random data make it as large as a test needs;
    ``uki``: the slot's kernel, where a built image carries it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "anklume-release").write_text(f"VERSION={version}\n")
        if uki is not None:
            (root / UKI_IN_IMAGE).parent.mkdir(parents=True)
            (root / UKI_IN_IMAGE).write_bytes(uki)
        if filler:
            (root / "filler").write_bytes(os.urandom(filler))
        sh("mksquashfs", root, dest, "-quiet", "-noappend", "-all-root")
    return dest


def verity_format(data: Path, tree: Path) -> dict[str, str]:
    out = sh("veritysetup", "format", data, tree)
    fields = dict(re.findall(r"^([A-Za-z ]+):\s*(\S+)$", out, re.M))
    return {"ROOT_HASH": fields["Root hash"], "SALT": fields["Salt"],
            "DATA_BLOCK_SIZE": fields["Data block size"],
            "HASH_BLOCK_SIZE": fields["Hash block size"], "HASH_ALG": fields["Hash algorithm"]}


def populate(stick: Stick, workdir: Path, version: str = "1.0.0") -> dict[str, str]:
    """Format EFI and PERSIST, put a verified system in slot A; return A's meta."""
    sh("mkfs.vfat", "-n", "ANKLUME-EFI", stick.part(1))
    sh("mkfs.ext4", "-q", "-F", "-L", "ANKLUME-PERSIST", stick.persist)
    squash = make_squashfs(workdir / "slot-a.squashfs", version)
    tree = workdir / "slot-a.verity"
    meta = verity_format(squash, tree)
    data = squash.read_bytes()
    with stick.part(2).open("r+b") as f:
        f.write(data)
    meta.update(STATUS="ok", VERSION=version, SIZE=str(len(data)),
                SHA256=hashlib.sha256(data).hexdigest(), INSTALLED_AT="2026-11-01T10:00:00Z",
                LAST_GOOD_AT="2026-11-01T10:05:00Z", SOURCE="image-builder")
    mnt = workdir / "persist-mnt"
    mnt.mkdir(exist_ok=True)
    sh("mount", stick.persist, mnt)
    try:
        (mnt / "slots").mkdir()
        (mnt / "ab-state").write_text("A\n")
        (mnt / "boot-count").write_text("1\n")
        (mnt / "slots" / "A.meta").write_text("".join(f"{k}={v}\n" for k, v in meta.items()))
        (mnt / "slots" / "A.verity").write_bytes(tree.read_bytes())
        (mnt / "slots" / "B.meta").write_text("STATUS=empty\n")
    finally:
        sh("umount", mnt)
    return meta


def build(workdir: Path, slot_mib: int = 32, persist_mib: int = 16) -> Stick:
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / "stick.img"
    write_gpt(image, slot_mib, persist_mib)
    stick = attach(image)
    try:
        populate(stick, workdir)
    except Exception:
        stick.detach()
        raise
    return stick


@contextmanager
def slot_mounted(slot: Path, tree: Path, root_hash: str, name: str,
                 mnt: Path) -> Iterator[Path]:
    """A slot opened through dm-verity (anklumed's own code) and its squashfs mounted."""
    from anklumed.slots import verity

    device = verity.open_device(slot, tree, root_hash, name)
    try:
        mnt.mkdir(exist_ok=True)
        sh("mount", "-t", "squashfs", "-o", "ro", device, mnt)
        try:
            yield mnt
        finally:
            sh("umount", mnt)
    finally:
        verity.close_device(name)
