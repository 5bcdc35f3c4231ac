"""A/B update on a real kernel: the slot anklumed writes opens with dm-verity.

anklumed's Updater writes slot B of a stick (a loop device in the guest),
then the kernel's dm-verity opens B with the tree and root hash anklumed
stored in PERSIST, and the squashfs in it mounts. A byte flipped afterwards
is caught.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from anklumed.errors import VerificationFailed
from anklumed.persist import PersistStore
from anklumed.slots import bundle, verity
from anklumed.slots.model import SlotStatus, read_slots_state, verity_file
from anklumed.slots.update import UpdateRequest
from anklumed.stick import SlotName
from devtools import stickimg
from devtools.update_direct import run_update

pytestmark = pytest.mark.vm


def direct_config(stick: stickimg.Stick, workdir: Path) -> Path:
    """anklumed's configuration and boot hand-off for a stick booted from slot A."""
    (workdir / "boot.env").write_text(f"SLOT=A\nBOOT_COUNT=1\nBOOT_DISK={stick.loop}\n")
    (workdir / "cmdline").write_text("quiet\n")
    config = workdir / "anklumed.toml"
    config.write_text(f'persist_mountpoint = "{workdir / "persist"}"\n'
                      f'handoff = "{workdir / "boot.env"}"\n'
                      f'cmdline = "{workdir / "cmdline"}"\n'
                      f'keys_dir = "{workdir / "keys"}"\n')
    return config


def signed_bundle(workdir: Path, version: str, filler: int = 0) -> Path:
    key = workdir / "builder.pem"
    (workdir / "keys").mkdir(exist_ok=True)
    bundle.generate_key(key).rename(workdir / "keys" / "builder.pem")
    image = stickimg.make_squashfs(workdir / "os.squashfs", version, filler)
    m = bundle.create_bundle(image, workdir / "bundle", version=version,
                             compatible="anklume-live-amd64", signing_key=key)
    return workdir / "bundle" / m.image.replace(".squashfs", ".manifest")


def stored_tree(stick: stickimg.Stick, slot: SlotName, dest: Path) -> str:
    store = PersistStore(stick.persist, mountpoint=dest.parent / "inspect")
    with store.transaction() as pdir:
        state = read_slots_state(pdir)
        shutil.copyfile(pdir.path(verity_file(slot)), dest)
    meta = state.meta[slot]
    assert (state.primary, state.boot_count, meta.status) == (slot, 0, SlotStatus.OK)
    assert meta.root_hash is not None
    return meta.root_hash


def test_a_slot_written_by_anklumed_opens_with_dm_verity_and_mounts(
        stick: stickimg.Stick, tmp_path: Path) -> None:
    manifest = signed_bundle(tmp_path, "2.0.0", filler=3 << 20)
    message = asyncio.run(run_update(direct_config(stick, tmp_path),
                                     UpdateRequest(str(manifest))))
    assert "slot B holds 2.0.0, signed by builder" in message
    tree = tmp_path / "B.verity"
    root_hash = stored_tree(stick, SlotName.B, tree)
    with stickimg.slot_mounted(stick.part(3), tree, root_hash, "anklume-test-b",
                               tmp_path / "slot") as mnt:
        assert (mnt / "etc/anklume-release").read_text() == "VERSION=2.0.0\n"
        assert (mnt / "filler").stat().st_size == 3 << 20
    # A byte flipped in the middle of the image is caught by the kernel's check.
    with stick.part(3).open("r+b") as f:
        f.seek(2 << 20)
        byte = f.read(1)
        f.seek(2 << 20)
        f.write(bytes([byte[0] ^ 0x80]))
    with pytest.raises(VerificationFailed):
        verity.verify(stick.part(3), tree, root_hash)
