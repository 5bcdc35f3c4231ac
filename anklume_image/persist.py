"""Stage ``persist``: PERSIST's first state, as an ext4 image made without mounting.

The files are written by anklumed's own PERSIST code into a staging
directory (slot A installed exactly as the updater installs a slot, slot B
empty), then ``mke2fs -d`` makes the filesystem from it, so the first boot
reads what every later boot reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from anklume_image.config import BuildConfig
from anklumed.command import run
from anklumed.persist import PersistDir
from anklumed.slots import model, update
from anklumed.slots.bundle import KeptManifest, Manifest
from anklumed.slots.model import SlotMeta
from anklumed.stick import SlotName

PERSIST_LABEL = "ANKLUME-PERSIST"


def stage_persist(config: BuildConfig, manifest: Manifest, bundle_dir: Path, tree: bytes,
                  staging: Path) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    pdir = PersistDir(staging)
    when = (datetime.fromtimestamp(config.source_date_epoch, UTC)
            if config.source_date_epoch is not None else datetime.now(UTC))
    manifest_file = bundle_dir / manifest.image.replace(".squashfs", ".manifest")
    update.activate(pdir, SlotName.A, manifest, KeptManifest.beside(manifest_file), tree,
                    f"anklume-image {config.version}", when)
    model.write_meta(pdir, SlotName.B, SlotMeta())



def make_persist(config: BuildConfig, staging: Path, out: Path) -> Path:
    out.unlink(missing_ok=True)
    run(["mke2fs", "-q", "-t", "ext4", "-L", PERSIST_LABEL, "-d", staging,
         "-E", "root_owner=0:0", "-F", out, f"{config.persist_mib}M"], timeout=120)
    return out
