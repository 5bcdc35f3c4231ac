"""Image tier: the stick image built once per session by the real builder.

A small image (no ZFS, small partitions, fast compression) signed with a key
made for the session, and for Secure Boot with a test key (firmware without
Secure Boot boots it all the same; test_secure_boot.py enrolls the key); the
package download is cached by its inputs under /var/cache/anklume-image, so
only the first build on a machine fetches.

ANKLUME_IMAGE_REUSE=1 (for a developer iterating on a boot test, never in CI)
keeps the image and its keys after the session and takes them again when the
image is there: each boot copies the stick, so the image itself stays as built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from anklume_image.build import build
from anklume_image.config import BuildConfig
from anklumed.slots import bundle

pytestmark = pytest.mark.image
WORK = Path(os.environ.get("ANKLUME_IMAGE_TEST_DIR", "/var/tmp/anklume-image-test"))


@dataclass(frozen=True)
class Built:
    config: BuildConfig
    image: Path
    key: Path
    public_key: Path
    secure_boot_key: Path
    secure_boot_cert: Path


def small_config(out: Path, **overrides: object) -> BuildConfig:
    options: dict[str, object] = {"out": out, "zfs": False, "efi_mib": 128, "slot_mib": 700,
                                  "persist_mib": 32, "compression_level": 1,
                                  "version": "1.0.0", **overrides}
    return BuildConfig.model_validate(options)


@pytest.fixture(scope="session")
def built() -> Iterator[Built]:
    if os.geteuid() != 0:
        pytest.skip("the image tier needs root (mmdebstrap, mke2fs -d as root)")
    config = _sway_config(WORK)

    def make() -> Path:
        make_test_keys(WORK)
        return build(config)

    for image in built_in(WORK, make, reuse=os.environ.get("CI") != "true"):
        yield _built(image, config)


def built_in(work: Path, make: Callable[[], Path], reuse: bool = True) -> Iterator[Path]:
    """A fixture's image, made by ``make`` in ``work`` emptied first, and
    removed after the session -- unless ANKLUME_IMAGE_REUSE=1 (and
    ``reuse``): then kept, and taken again when it is there."""
    reuse = reuse and os.environ.get("ANKLUME_IMAGE_REUSE") == "1"
    image = work / "anklume-live.img"
    if reuse and image.exists():
        yield image
        return
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    yield make()
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)


# 2026-01-01: before the test certificate's start (it is made at each run).
SOURCE_DATE_EPOCH = 1_767_225_600


def make_test_keys(work: Path) -> None:
    """The session's keys: the image's signing key (signing.pem), and a
    Secure Boot db key and certificate (db.key, db.crt)."""
    bundle.generate_key(work / "signing.pem")
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "30", "-subj", "/CN=anklume test db/", "-keyout", work / "db.key",
                    "-out", work / "db.crt"], check=True, capture_output=True)


def _sway_config(work: Path) -> BuildConfig:
    """A sway image (test_desktop_image.py reads it, test_sway_session.py
    boots it to its session; the other boots stop at multi-user.target, as
    a console image's), signed for Secure Boot (test_secure_boot.py)
    with SOURCE_DATE_EPOCH, as a release is."""
    return small_config(work / "anklume-live.img", signing_key=work / "signing.pem",
                        desktop="sway", secure_boot_key=work / "db.key",
                        secure_boot_cert=work / "db.crt",
                        # As a release is built: its signatures dated with it
                        # (faketime), which the firmware must accept as any other.
                        source_date_epoch=SOURCE_DATE_EPOCH)


def _built(image: Path, config: BuildConfig) -> Built:
    assert config.signing_key and config.secure_boot_key and config.secure_boot_cert
    return Built(config, image, config.signing_key, config.signing_key.with_suffix(".pub.pem"),
                 config.secure_boot_key, config.secure_boot_cert)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The boots the emulator wedged and the harness ran again, said at the
    end of the tier, so a person sees how often QEMU did it."""
    from devtools.image_vm import WEDGED_BOOTS

    if WEDGED_BOOTS:
        terminalreporter.write_line(
            f"QEMU wedged {len(WEDGED_BOOTS)} boot(s) (a vCPU's timer never fired); each "
            "was run again on the disks as they were: " + ", ".join(WEDGED_BOOTS), yellow=True)
