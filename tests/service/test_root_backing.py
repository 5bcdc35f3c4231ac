"""What SafeToRemove rests on: the root's real backing, never the hand-off's word.

anklumed's SafeToRemove is true when / reads nothing from the stick
(``host.root_backing``, followed through overlay lower dirs, device-mapper
slaves and loop backing files) and PERSIST is idle. Here the initramfs's
root is built from real kernel objects -- a squashfs mounted as a tmpfs
overlay's lower dir -- once over a RAM copy (toram: a tmpfs file on a loop
device) and once over a stick partition, and its backing is read as
anklumed reads it. This machine has no device-mapper: the dm-verity layer
between them is the VM tier's, and the end-to-end proof, a toram boot of
the built image whose anklumed reports SafeToRemove true, is
tests/image/test_boot_image.py's first boot.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from anklumed.host import Backing, backing_of, parse_mountinfo
from devtools import stickimg
from tests.service.conftest import Sim


def run(*argv: str | Path) -> str:
    return stickimg.sh(*argv)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, ExitStack]]:
    """A squashfs image, and a stack to undo the mounts and loop devices."""
    (tmp_path / "rootfs" / "etc").mkdir(parents=True)
    (tmp_path / "rootfs" / "etc" / "anklume-release").write_text("VERSION=1.0.0\n")
    run("mksquashfs", tmp_path / "rootfs", tmp_path / "os.squashfs", "-quiet", "-noappend")
    with ExitStack() as undo:
        yield tmp_path, undo


def mount(undo: ExitStack, source: str | Path, target: Path, *options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    run("mount", *options, source, target)
    undo.callback(subprocess.run, ["umount", str(target)], check=False)


def open_root(undo: ExitStack, work: Path, data: Path) -> Path:
    """The initramfs's root over the block device ``data``: squashfs, tmpfs overlay."""
    mount(undo, data, work / "lower", "-t", "squashfs", "-o", "ro")
    mount(undo, "tmpfs", work / "rw", "-t", "tmpfs")
    (work / "rw" / "upper").mkdir()
    (work / "rw" / "work").mkdir()
    mount(undo, "anklume-root", work / "root", "-t", "overlay", "-o",
          f"lowerdir={work / 'lower'},upperdir={work / 'rw/upper'},workdir={work / 'rw/work'}")
    assert (work / "root" / "etc" / "anklume-release").read_text() == "VERSION=1.0.0\n"
    return work / "root"


def backing(path: Path) -> Backing:
    return backing_of(str(path), parse_mountinfo(Path("/proc/self/mountinfo").read_text()))


def test_a_root_copied_to_ram_reads_nothing_from_a_disk(stack: tuple[Path, ExitStack]) -> None:
    work, undo = stack
    mount(undo, "anklume-ram", work / "ram", "-t", "tmpfs")
    shutil.copyfile(work / "os.squashfs", work / "ram" / "slot.img")
    loop = stickimg.find_loop(work / "ram" / "slot.img", ("--read-only",))
    undo.callback(subprocess.run, ["losetup", "-d", str(loop)], check=False)
    root = open_root(undo, work, loop)
    assert backing(root) == Backing(in_ram=True)


def test_a_root_on_the_stick_reads_the_stick(stack: tuple[Path, ExitStack]) -> None:
    work, undo = stack
    stickimg.write_gpt(work / "stick.img", slot_mib=8, persist_mib=8)
    stick = stickimg.attach(work / "stick.img")
    undo.callback(stick.detach)
    run("dd", f"if={work / 'os.squashfs'}", f"of={stick.part(2)}", "conv=fsync", "status=none")
    root = open_root(undo, work, stick.part(2))
    assert backing(root) == Backing(in_ram=False, disks=(stick.loop.name,))


def test_a_handoff_saying_toram_never_makes_the_stick_safe_to_remove(sim: Sim) -> None:
    """The hand-off claims a RAM copy, but / (this machine's) reads a disk."""
    assert sim.stick is not None
    sim.stop_daemon()
    sim.write_handoff(
        f"SLOT=A\nBOOT_COUNT=1\nROLLBACK=0\nTORAM=1\nVERITY=signed\nBOOT_DISK={sim.stick.loop}\n"
        f"PERSIST_PARTUUID={stickimg.partuuid(sim.stick.persist)}\n")
    sim.start_daemon()
    status = sim.status()
    assert status["BootMediaPresent"] is True and status["BootedSlot"] == "A"
    assert status["RootInRam"] == "no" and status["SafeToRemove"] is False
