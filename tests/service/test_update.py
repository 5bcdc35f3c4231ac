"""A/B update through the daemon: bundle checks, the write, activation, refusals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from anklumed.slots import bundle
from devtools import stickimg
from tests.service.conftest import Sim

VERIFICATION_FAILED, INVALID_ARGUMENT = 8, 4


def make_bundle(sim: Sim, tmp_path: Path, version: str = "2.0.0",
                compatible: str = "anklume-live-amd64", trusted: bool = True,
                filler: int = 0) -> Path:
    key = tmp_path / f"builder-{version}-{compatible}.pem"
    public = bundle.generate_key(key)
    if trusted:
        keys = sim.workdir / "keys"
        keys.mkdir(exist_ok=True)
        public.rename(keys / "builder.pem")
    image = stickimg.make_squashfs(tmp_path / f"os-{version}.squashfs", version, filler)
    out = tmp_path / "bundle"
    m = bundle.create_bundle(image, out, version=version, compatible=compatible,
                             signing_key=key)
    return out / m.image.replace(".squashfs", ".manifest")


def slot_files(sim: Sim) -> tuple[str, str, str]:
    files = sim.persist_files()
    return files["ab-state"], files["boot-count"], files["slots/B.meta"]


def test_update_writes_the_other_slot_verifies_it_and_makes_it_next(
        sim: Sim, tmp_path: Path) -> None:
    manifest_path = make_bundle(sim, tmp_path)
    m = bundle.parse_manifest(manifest_path.read_bytes())
    done = sim.ctl("update", str(manifest_path), "--verify-hash", m.root_hash)
    assert done.returncode == 0, done.stderr
    assert "slot B holds 2.0.0, signed by builder" in done.stdout
    status = sim.status()
    assert (status["PrimarySlot"], status["BootCount"], status["FallbackSlot"]) == ("B", 0, "A")
    assert status["Slots"]["B"]["Status"] == "ok" and status["Slots"]["B"]["Version"] == "2.0.0"
    assert status["LastUpdate"]["state"] == "succeeded"
    # What anklumed stored verifies the partition, by cryptsetup's own reckoning.
    files = sim.persist_files()
    tree = tmp_path / "B.verity"
    with sim.persist_mounted() as mnt:
        tree.write_bytes((mnt / "slots" / "B.verity").read_bytes())
    assert sim.stick is not None
    subprocess.run(["veritysetup", "verify", str(sim.stick.part(3)), str(tree), m.root_hash],
                   check=True, capture_output=True)
    assert f"ROOT_HASH={m.root_hash}" in files["slots/B.meta"]
    # And the old system is one rollback away.
    assert sim.ctl("rollback").returncode == 0
    assert sim.status()["PrimarySlot"] == "A"


def test_a_tampered_manifest_is_refused_and_nothing_is_written(
        sim: Sim, tmp_path: Path) -> None:
    manifest_path = make_bundle(sim, tmp_path)
    manifest_path.write_text(manifest_path.read_text().replace("VERSION=2.0.0", "VERSION=2.0.1"))
    before = slot_files(sim)
    refused = sim.ctl("update", str(manifest_path))
    assert refused.returncode == VERIFICATION_FAILED, refused.stderr
    assert "signature matches no trusted key" in refused.stderr
    assert slot_files(sim) == before


def test_an_unknown_signer_is_refused(sim: Sim, tmp_path: Path) -> None:
    manifest_path = make_bundle(sim, tmp_path, trusted=False)
    refused = sim.ctl("update", str(manifest_path))
    assert refused.returncode == VERIFICATION_FAILED
    assert "no trusted key" in refused.stderr


def test_a_wrong_pinned_hash_is_refused(sim: Sim, tmp_path: Path) -> None:
    manifest_path = make_bundle(sim, tmp_path)
    before = slot_files(sim)
    refused = sim.ctl("update", str(manifest_path), "--verify-hash", "ab" * 32)
    assert refused.returncode == VERIFICATION_FAILED
    assert "--verify-hash" in refused.stderr
    assert slot_files(sim) == before


@pytest.mark.parametrize("filler", [0, 6 << 20], ids=["one-chunk", "several-chunks"])
def test_a_truncated_image_is_refused_before_a_byte_is_written(
        sim: Sim, tmp_path: Path, filler: int) -> None:
    manifest_path = make_bundle(sim, tmp_path, filler=filler)
    m = bundle.parse_manifest(manifest_path.read_bytes())
    image = manifest_path.with_name(m.image)
    image.write_bytes(image.read_bytes()[:-100])
    before = slot_files(sim)
    refused = sim.ctl("update", str(manifest_path))
    assert refused.returncode == VERIFICATION_FAILED
    assert f"truncated: {m.size - 100} of {m.size} bytes" in refused.stderr
    # A local image's size is known before the first write: the slot is as it was.
    assert slot_files(sim) == before
    assert sim.status()["LastUpdate"]["error"] == "VerificationFailed"


@pytest.mark.parametrize(("version", "compatible", "why"), [
    ("2.0.0", "anklume-live-arm64", "this bundle is for"),
    ("0.9.0", "anklume-live-amd64", "older than the running 1.0.0"),
])
def test_incompatible_and_older_bundles_are_refused(
        sim: Sim, tmp_path: Path, version: str, compatible: str, why: str) -> None:
    manifest_path = make_bundle(sim, tmp_path, version, compatible)
    refused = sim.ctl("update", str(manifest_path))
    assert refused.returncode == INVALID_ARGUMENT
    assert why in refused.stderr


def test_a_downgrade_goes_through_when_allowed(sim: Sim, tmp_path: Path) -> None:
    manifest_path = make_bundle(sim, tmp_path, "0.9.0")
    done = sim.ctl("update", str(manifest_path), "--allow-downgrade")
    assert done.returncode == 0, done.stderr
    assert sim.status()["Slots"]["B"]["Version"] == "0.9.0"


def test_the_slot_that_boots_next_is_not_overwritten(sim: Sim, tmp_path: Path) -> None:
    # (The running slot is never a target: the target is always the other one.)
    sim.write_handoff(sim.handoff.read_text().replace("SLOT=A", "SLOT=B"))
    sim.restart_daemon()
    manifest_path = make_bundle(sim, tmp_path)
    refused = sim.ctl("update", str(manifest_path))
    # Booted from B (empty, per PERSIST): A would be the target, and A is the next boot.
    assert refused.returncode == INVALID_ARGUMENT
    assert "next boot" in refused.stderr
