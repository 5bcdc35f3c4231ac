"""Stages ``squashfs`` and ``bundle``: the OS slot image and its signed bundle.

The squashfs is packed straight from mmdebstrap's tarball (squashfs-tools-ng's
tar2sqfs), so ownership and modes come from the archive, not from files
unpacked on the build host. The bundle (anklume-bundle's format: image,
manifest, signature) is what the stick's slot A is installed from and what
``anklumectl update`` takes on another stick.
"""

from __future__ import annotations

import os
from pathlib import Path

from anklume_image.config import BuildConfig, MiB
from anklume_image.errors import BuildError
from anklumed.command import run
from anklumed.slots import bundle
from anklumed.slots.boot_entries import UKI_IN_IMAGE
from anklumed.slots.bundle import Manifest
from anklumed.slots.verity_tree import VerityHasher

SQUASHFS_TIMEOUT = 1800.0


def build_squashfs(config: BuildConfig, tarball: Path, work: Path) -> Path:
    out = work / "os.squashfs"
    options = ["--quiet", "--force", "--no-skip", "--compressor", "zstd",
               "--comp-extra", f"level={config.compression_level}",
               "--num-jobs", str(os.cpu_count() or 1)]
    if config.source_date_epoch is not None:
        # Files keep the archive's times (clamped by mmdebstrap); the
        # directories tar2sqfs makes itself get this one.
        options += ["--defaults", f"mtime={config.source_date_epoch}"]
    # tar2sqfs reads the archive on its stdin: the shell redirects the file.
    run(["sh", "-c", 'exec tar2sqfs "$@" < "$0"', tarball, *options, out],
        timeout=SQUASHFS_TIMEOUT)
    size = out.stat().st_size
    if size > config.slot_mib * MiB:
        raise BuildError(f"the OS image is {size // MiB} MiB, more than a slot's "
                         f"{config.slot_mib} MiB: give --slot-size more")
    return out


def build_bundle(config: BuildConfig, image: Path, work: Path, uki: Path
                 ) -> tuple[Manifest, Path]:
    """``uki``: the copy of the image's UKI the rootfs stage took out, which
    the manifest pins (the same bytes as inside the image)."""
    out = work / "bundle"
    out.mkdir(exist_ok=True)
    if not uki.is_file():
        raise BuildError(f"the image has no /{UKI_IN_IMAGE} (ukify did not run?)")
    manifest = bundle.create_bundle(
        image, out, version=config.version, compatible=config.compatible,
        signing_key=config.signing_key, build_id=None, uki=(UKI_IN_IMAGE, uki))
    return manifest, out


def verity_tree(image: Path, manifest: Manifest) -> bytes:
    """The slot's dm-verity tree, as PERSIST keeps it, from the bundle's own
    parameters (the same hasher the updater streams through)."""
    hasher = VerityHasher(manifest.verity_params())
    with hasher, image.open("rb") as f:
        while chunk := f.read(bundle.CHUNK):
            hasher.update(chunk)
        hasher.update(b"\0" * (-manifest.size % manifest.data_block_size))
        result = hasher.finish()
    if result.root_hash != manifest.root_hash:
        raise BuildError(f"{image} changed while the build hashed it: build again")
    return result.tree
