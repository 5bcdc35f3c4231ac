"""The key that signs slot manifests: checked before any build work starts."""

from __future__ import annotations

from pathlib import Path

from anklume_image.errors import BuildError


def public_key_of(private_key: Path) -> bytes:
    """The PEM public key of an Ed25519 private key, or a clear error."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = private_key.read_bytes()
    except OSError as e:
        raise BuildError(f"cannot read the signing key {private_key}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BuildError(f"{private_key} is not an unencrypted PEM private key "
                         "(make one with: anklume-bundle keygen KEY.pem)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BuildError(f"{private_key} is not an Ed25519 key "
                         "(make one with: anklume-bundle keygen KEY.pem)")
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
