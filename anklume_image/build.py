"""The build: named stages over one configuration, and an output that is
either whole (image and its .sha256) or absent.

An interrupted build leaves its work directory, which the next build of the
same output removes first: a rerun always starts clean. The image is written
as OUT.part and renamed only after its checksum file is in place, so no image
is ever seen without its .sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from anklume_image import arch_rootfs, esp, persist, rootfs, secure_boot, slot, stick, wheels
from anklume_image.config import Base, BuildConfig
from anklume_image.errors import BuildError
from anklume_image.signing import public_key_of
from anklume_image.tarball import replace_member
from anklumed.slots.boot_entries import UKI_IN_IMAGE

log = logging.getLogger(__name__)
CHECKOUT = Path(__file__).resolve().parent.parent


def check_output(out: Path) -> None:
    """A build writes a file; flashing it is a separate, deliberate step."""
    if out.exists() and stat.S_ISBLK(out.stat().st_mode):
        raise BuildError(f"{out} is a block device: build to a file, then write it to the "
                         "stick with dd (a build never writes a disk)")
    if out.is_dir():
        raise BuildError(f"{out} is a directory: give the image's file name")
    if not out.parent.is_dir():
        raise BuildError(f"{out.parent} does not exist")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    start = time.monotonic()
    log.info("stage %s ...", name)
    yield
    log.info("stage %s done in %.1f s", name, time.monotonic() - start)


def build(config: BuildConfig, checkout: Path = CHECKOUT) -> Path:
    out = config.out.absolute()
    check_output(out)
    public_key = public_key_of(config.signing_key) if config.signing_key else None
    sb_pair = _secure_boot_pair(config)
    if config.base is Base.ARCH:
        arch_rootfs.preflight(config)  # refused before the last build's files go
    work = config.work_dir
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted build left
    checksum = out.with_name(out.name + ".sha256")
    for stale in (out, checksum):
        stale.unlink(missing_ok=True)
    # A failed build leaves nothing that looks built, the last bundle neither.
    shutil.rmtree(out.with_name(out.name + ".bundle"), ignore_errors=True)
    work.mkdir(parents=True)
    persist_guid = str(uuid.uuid4())
    with stage("wheels"):  # what Debian lacks, verified before the rootfs is made
        wheels.stage(config)
    with stage("rootfs"):
        base = arch_rootfs if config.base is Base.ARCH else rootfs
        tarball = base.build_rootfs(config, work, checkout, public_key)
    uki = work / "boot-files" / "uki" / "uki.efi"
    if sb_pair is not None:
        with stage("secure-boot"):
            _sign_boot_chain(config, sb_pair, work / "boot-files", tarball)
    with stage("slot"):
        image = slot.build_squashfs(config, tarball, work)
        manifest, bundle_dir = slot.build_bundle(config, image, work, uki)
        tree = slot.verity_tree(image, manifest)
    with stage("persist"):
        persist.stage_persist(config, manifest, bundle_dir, tree, work / "persist-files")
        persist_img = persist.make_persist(config, work / "persist-files", work / "persist.img")
    with stage("esp"):
        esp_img = esp.make_esp(config, work / "boot-files", uki, persist_guid, work)
    with stage("stick"):
        part = out.with_name(out.name + ".part")
        stick.write_stick(stick.layout(config, esp_img, image, persist_img, persist_guid), part)
        pending = checksum.with_name(checksum.name + ".part")
        pending.write_text(f"{sha256_file(part)}  {out.name}\n")
        pending.replace(checksum)
        part.replace(out)
    _keep_bundle(bundle_dir, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _secure_boot_pair(config: BuildConfig) -> secure_boot.SigningPair | None:
    key, cert = config.secure_boot_key, config.secure_boot_cert
    if key is None and cert is None:
        return None
    if key is None or cert is None:
        raise BuildError("--secure-boot-key and --secure-boot-cert go together")
    if config.signing_key is None:
        # Without it the initramfs mounts the slot on the unsigned meta's root
        # hash: the firmware's check would end at the initramfs.
        raise BuildError("--secure-boot-key needs --signing-key: the signed UKI carries the "
                         "key that verifies the slot, and without it nothing does")
    secure_boot.check_signing_time(config.source_date_epoch)
    return secure_boot.check_pair(key, cert)


def _sign_boot_chain(config: BuildConfig, pair: secure_boot.SigningPair, boot: Path,
                     tarball: Path) -> None:
    """systemd-boot for the ESP, and the UKI both on the ESP and in the slot."""
    systemd_boot = boot / "efi" / f"systemd-boot{config.arch_efi}.efi"
    if not systemd_boot.exists():
        raise BuildError(f"the image has no {systemd_boot.name} (systemd-boot-efi)")
    secure_boot.sign(pair, systemd_boot, config.source_date_epoch)
    uki = boot / "uki" / "uki.efi"
    if not uki.is_file():
        raise BuildError(f"the image has no /{UKI_IN_IMAGE} (ukify did not run?)")
    secure_boot.sign(pair, uki, config.source_date_epoch)
    replace_member(tarball, UKI_IN_IMAGE, uki)


def _keep_bundle(bundle_dir: Path, out: Path) -> None:
    """The bundle of the version built, beside the image: what a web server
    holds for ``anklumectl update URL`` on sticks of an older version."""
    target = out.with_name(out.name + ".bundle")
    shutil.rmtree(target, ignore_errors=True)
    bundle_dir.replace(target)
