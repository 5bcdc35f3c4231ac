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


STATE_SCRIPT = Path(__file__).resolve().parents[2] / "initramfs" / "anklume-state.sh"


def kept_bundle(sim: Sim) -> tuple[bytes | None, bytes | None]:
    with sim.persist_mounted() as mnt:
        manifest, signature = mnt / "slots" / "B.manifest", mnt / "slots" / "B.manifest.sig"
        return (manifest.read_bytes() if manifest.exists() else None,
                signature.read_bytes() if signature.exists() else None)


def test_the_installed_manifest_and_signature_are_kept_on_persist(
        sim: Sim, tmp_path: Path) -> None:
    manifest_path = make_bundle(sim, tmp_path)
    assert sim.ctl("update", str(manifest_path)).returncode == 0
    manifest, signature = kept_bundle(sim)
    # The exact bytes of the bundle's: the initramfs verifies them with its key.
    assert manifest == manifest_path.read_bytes()
    assert signature == manifest_path.with_name(manifest_path.name + ".sig").read_bytes()
    assert bundle.check_signature(manifest, signature,
                                  bundle.load_trusted_keys(sim.workdir / "keys")) == "builder"
    # What the boot reads from the meta is what the verified manifest says.
    m = bundle.parse_manifest(manifest)
    with sim.persist_mounted() as mnt:
        info = subprocess.run(["busybox", "sh", str(STATE_SCRIPT), "slot-info", str(mnt), "B"],
                              capture_output=True, text=True, check=True).stdout
    assert f"ROOT_HASH={m.root_hash}\n" in info and f"SALT={m.salt}\n" in info
    assert f"SIZE={m.size}\n" in info and "STATUS=ok\n" in info


def test_an_unsigned_update_leaves_no_older_signature(sim: Sim, tmp_path: Path) -> None:
    assert sim.ctl("update", str(make_bundle(sim, tmp_path))).returncode == 0
    assert sim.ctl("set-primary", "A").returncode == 0  # B may be written again
    unsigned = make_bundle(sim, tmp_path, version="2.1.0")
    unsigned.with_name(unsigned.name + ".sig").unlink()
    m = bundle.parse_manifest(unsigned.read_bytes())
    done = sim.ctl("update", str(unsigned), "--verify-hash", m.root_hash)
    assert done.returncode == 0, done.stderr
    assert kept_bundle(sim) == (unsigned.read_bytes(), None)


def test_a_slot_written_over_loses_its_kept_manifest(sim: Sim, tmp_path: Path) -> None:
    assert sim.ctl("update", str(make_bundle(sim, tmp_path))).returncode == 0
    assert sim.ctl("set-primary", "A").returncode == 0  # B may be written again
    broken = make_bundle(sim, tmp_path, version="2.1.0", filler=6 << 20)
    image = broken.with_name(bundle.parse_manifest(broken.read_bytes()).image)
    # One flipped byte (not a truncation: a local image of the wrong size is
    # refused before any write): found only after the slot was written over.
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    assert sim.ctl("update", str(broken)).returncode == VERIFICATION_FAILED
    assert "STATUS=failed" in sim.persist_files()["slots/B.meta"]
    assert kept_bundle(sim) == (None, None)
