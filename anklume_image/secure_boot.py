"""Secure Boot: systemd-boot and the slot's UKI signed with the builder's key.

The firmware checks systemd-boot and each UKI against its ``db``; the UKI
carries the kernel and the initramfs, and the initramfs carries the Ed25519
key that verifies slot manifests (install.key_hooks, the initramfs-tools
hook), so one signature covers the chain down to dm-verity's root hash
(docs/boot-chain.md). Signing is done on the build host with sbsign
(Debian's sbsigntool), so the private key never enters the image's tree:
the UKI is signed after mmdebstrap made it, and the signed file replaces the
unsigned one inside the rootfs tarball (tarball.py), so the squashfs, the bundle's
manifest and the ESP all carry the same signed bytes. An update therefore
delivers a UKI that was signed when its bundle was built; nothing on the
stick signs or re-makes one.

The key and the certificate are checked before any build work: a key that
does not parse, a certificate that does not, or one that belongs to another
key stops the build with a sentence, and nothing is made.

A signature carries the time it was made (PKCS#9 signingTime, an attribute
the signature covers): two builds of the same inputs gave UKIs, and so
squashfs, that differed only there. With SOURCE_DATE_EPOCH set, sbsign runs
under libfaketime with its clock stopped at that second, as systemd-sbsign does by itself (its
``asn1_timestamp``): the same inputs and key give the same bytes. The time
is a claim of the signer, never checked by the firmware (UEFI has no trusted
clock), so nothing trusts it less.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from anklume_image.errors import BuildError
from anklumed.command import run

SIGN_TIMEOUT = 120.0
_MAKE_ONE = ("make a pair with: openssl req -new -x509 -newkey rsa:2048 -nodes -days 3650 "
             "-subj '/CN=anklume Live Secure Boot/' -keyout db.key -out db.crt")


@dataclass(frozen=True)
class SigningPair:
    key: Path
    cert: Path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BuildError(f"cannot read the Secure Boot {what} {path}: {e.strerror}") from None


def check_pair(key: Path, cert: Path) -> SigningPair:
    """The pair sbsign will use, or a clear error: an unencrypted PEM RSA key
    (UEFI firmware verifies RSA-2048 signatures) and an X.509 certificate
    (PEM or DER) of that same key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    try:
        private = serialization.load_pem_private_key(_read(key, "key"), password=None)
    except (ValueError, TypeError):
        raise BuildError(f"{key} is not an unencrypted PEM private key ({_MAKE_ONE})") from None
    if not isinstance(private, RSAPrivateKey):
        raise BuildError(f"{key} is not an RSA key: UEFI firmware checks RSA signatures "
                         f"({_MAKE_ONE})")
    data = _read(cert, "certificate")
    try:
        certificate = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                       else x509.load_der_x509_certificate(data))
    except ValueError:
        raise BuildError(f"{cert} is not an X.509 certificate (PEM or DER) ({_MAKE_ONE})"
                         ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if certificate.public_key().public_bytes(der, spki) != \
            private.public_key().public_bytes(der, spki):
        raise BuildError(f"the certificate {cert} is not the one of the key {key}: "
                         "give the certificate made with that key")
    if shutil.which("sbsign") is None:
        raise BuildError("sbsign is not installed: apt-get install sbsigntool")
    return SigningPair(key, cert)


Argv = list[str | Path]


def dated(argv: Argv, when: int | None) -> tuple[Argv, dict[str, str] | None]:
    """``argv`` and its environment, run with the clock stopped at ``when``
    (seconds since 1970), or as they are without it."""
    if when is None:
        return argv, None
    # -f with a bare date stops the clock there (faketime's plain form only
    # starts it there: hashing a large UKI could pass a second); read in
    # UTC, whatever the host's time zone.
    frozen = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return ["faketime", "-f", frozen, *argv], {"TZ": "UTC"}


def check_signing_time(source_date_epoch: int | None) -> None:
    """A build given SOURCE_DATE_EPOCH signs at that second: faketime is needed."""
    if source_date_epoch is not None and shutil.which("faketime") is None:
        raise BuildError("faketime is not installed: apt-get install faketime (with "
                         "SOURCE_DATE_EPOCH, signatures are dated with it, so that a "
                         "rebuild gives the same bytes)")


def sign(pair: SigningPair, efi: Path, signing_time: int | None = None) -> None:
    """Sign ``efi`` in place (a new file renamed over it), then check the
    signature with the certificate, so a build never ships a file the
    firmware would refuse for a reason found only at boot. ``signing_time``
    (SOURCE_DATE_EPOCH): the signature's date, else now."""
    signed = efi.with_name(efi.name + ".signed")
    argv, env = dated(["sbsign", "--key", pair.key, "--cert", pair.cert, "--output", signed,
                       efi], signing_time)
    run(argv, timeout=SIGN_TIMEOUT, env=env)
    run(["sbverify", "--cert", pair.cert, signed], timeout=SIGN_TIMEOUT)
    signed.replace(efi)
