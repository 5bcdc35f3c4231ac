"""The slot write itself (anklumed/slots/update.py write_slot) on a loop device:
O_DIRECT from two buffers taking turns, the zero padding, the read-back."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import mmap
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from anklumed.errors import VerificationFailed
from anklumed.jobs import Job
from anklumed.slots.bundle import CHUNK, FORMAT, Manifest
from anklumed.slots.source import HttpSettings, open_bundle
from anklumed.slots.update import write_slot
from anklumed.slots.verity_tree import VerityHasher, VerityParams
from devtools import stickimg

pytestmark = pytest.mark.root


@pytest.fixture(params=[512, 4096], ids=["512-byte-sectors", "4k-sectors"])
def target(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A slot on a loop device with 512-byte or 4096-byte logical sectors (USB
    sticks and disks come with either)."""
    backing = tmp_path / "slot.img"
    backing.write_bytes(b"\xff" * (12 << 20))  # not zeros: the padding must be written
    dev = stickimg.find_loop(backing, ("--sector-size", str(request.param)))
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def bundle_of(tmp_path: Path, image: bytes, block: int) -> Path:
    salt = os.urandom(32)
    hasher = VerityHasher(VerityParams(salt=salt, data_block_size=block))
    hasher.update(image + bytes(-len(image) % block))
    (tmp_path / "os.squashfs").write_bytes(image)
    m = Manifest(format=FORMAT, compatible="anklume-live-amd64", version="2.0.0",
                 image="os.squashfs", size=len(image),
                 sha256=hashlib.sha256(image).hexdigest(),
                 root_hash=hasher.finish().root_hash, salt=salt.hex(), data_block_size=block)
    path = tmp_path / "os.manifest"
    path.write_text(m.to_text())
    return path


def write(manifest: Path, device: Path) -> None:
    async def run() -> None:
        job = Job(1, "update", asyncio.get_running_loop(), lambda _j: None)
        source = open_bundle(str(manifest), manifest.parent, HttpSettings(), lambda _s: None)
        await asyncio.to_thread(write_slot, job, source, device)
    asyncio.run(run())


@pytest.mark.parametrize("size, block", [
    (2 * CHUNK + 3 * 4096, 4096),  # three chunks, the buffers take turns
    (5000, 512),  # 512-byte verity blocks: a last write O_DIRECT may refuse
], ids=["chunks", "512-byte-blocks"])
def test_the_device_holds_the_image_then_zeros(tmp_path: Path, target: Path,
                                               size: int, block: int) -> None:
    image = os.urandom(size)
    write(bundle_of(tmp_path, image, block), target)
    padded = size + (-size % block)
    with target.open("rb") as dev:
        held = dev.read(padded + 4096)
    assert held[:size] == image
    assert held[size:padded] == bytes(padded - size)
    assert held[padded:] == b"\xff" * 4096  # nothing written past the tree's data


def test_a_4k_sector_device_refuses_the_direct_write_the_fallback_avoids(
        target: Path) -> None:
    """Why write_slot drops O_DIRECT for a last write not 4096-aligned: with
    512-byte verity blocks the image may end inside a 4096-byte sector."""
    sector = int(Path(f"/sys/block/{target.name}/queue/logical_block_size").read_text())
    fd = os.open(target, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    try:
        if sector == 4096:
            with pytest.raises(OSError) as refused:
                os.pwrite(fd, memoryview(buf)[:1024], 4096)
            assert refused.value.errno == errno.EINVAL
        else:
            assert os.pwrite(fd, memoryview(buf)[:1024], 4096) == 1024
    finally:
        os.close(fd)
        buf.close()


def test_an_image_longer_than_its_manifest_is_refused(tmp_path: Path, target: Path) -> None:
    manifest = bundle_of(tmp_path, os.urandom(CHUNK + 4096), 4096)
    with (tmp_path / "os.squashfs").open("ab") as image:
        image.write(b"more")
    with pytest.raises(VerificationFailed, match="longer than its manifest"):
        write(manifest, target)
