"""Slot bundles: a squashfs image, its manifest and, optionally, a signature.

A bundle is three files side by side: ``NAME.squashfs``, ``NAME.manifest``
(``KEY=value`` lines, like everything on PERSIST) and ``NAME.manifest.sig``
(a base64 Ed25519 signature of the manifest's exact bytes). The manifest pins
the image completely: size, sha256 and the dm-verity parameters and root hash,
so a signed manifest vouches for every byte of the image. Trusted public keys
are PEM files in /etc/anklume/keys.d. Unlike the PERSIST files, a manifest is
made by a program: it is parsed strictly and any defect refuses the bundle.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from anklumed.errors import AnklumeError, InvalidArgument, VerificationFailed
from anklumed.persist import format_kv, parse_kv
from anklumed.slots.local_files import read_small
from anklumed.slots.verity_tree import VerityHasher, VerityParams

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# cryptography is imported where a key is used: it costs ~8 MB of the
# daemon's resident memory, and most of the daemon's life has no update.

log = logging.getLogger(__name__)
FORMAT = 1
COMPATIBLE = "anklume-live-amd64"  # the default target: bundles for other systems are refused
KEYS_DIR = Path("/etc/anklume/keys.d")
MAX_MANIFEST = 64 * 1024
MAX_SIGNATURE = 4 * 1024  # a base64 Ed25519 signature is 88 bytes
MAX_KEY = 16 * 1024  # a PEM Ed25519 public key is 113 bytes
MAX_KEYS = 64  # keys.d holds a few keys; more are ignored, with a warning
MAX_UKI = 512 * 1024 * 1024  # an ESP is 512 MiB; a UKI is tens of MiB
CHUNK = 4 * 1024 * 1024  # how the image is read, hashed and written: large and block-aligned
_HEX = re.compile(r"^[0-9a-f]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class KeptManifest:
    """A manifest's exact bytes and its signature's (None: unsigned), as PERSIST
    keeps them beside an installed slot so the initramfs can check the slot's
    meta against what was signed."""

    text: bytes
    signature: bytes | None

    @classmethod
    def beside(cls, manifest_path: Path) -> KeptManifest:
        """Read a bundle made here (the image builder, test sticks)."""
        signature = manifest_path.with_name(manifest_path.name + ".sig")
        return cls(manifest_path.read_bytes(),
                   signature.read_bytes() if signature.exists() else None)


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int
    compatible: str
    version: str
    image: str
    size: int
    sha256: str
    root_hash: str
    salt: str
    data_block_size: int = 4096
    hash_block_size: int = 4096
    hash_alg: str = "sha256"
    build_date: str | None = None
    build_id: str | None = None
    # The slot's kernel (a UKI) inside the image, for the ESP: all three or none.
    uki: str | None = None
    uki_size: int | None = None
    uki_sha256: str | None = None

    @model_validator(mode="after")
    def _uki_whole(self) -> Manifest:
        given = [self.uki is not None, self.uki_size is not None, self.uki_sha256 is not None]
        if any(given) and not all(given):
            raise ValueError("UKI, UKI_SIZE and UKI_SHA256 go together (the slot's kernel)")
        return self

    @field_validator("uki")
    @classmethod
    def _uki_path(cls, value: str) -> str:
        parts = value.split("/")
        if len(value) > 256 or any(not _NAME.match(p) or p in (".", "..") for p in parts):
            raise ValueError("not a relative path of plain names inside the image")
        return value

    @field_validator("uki_size")
    @classmethod
    def _uki_size(cls, value: int) -> int:
        if not 0 < value <= MAX_UKI:
            raise ValueError(f"a kernel image is between 1 byte and {MAX_UKI // 2**20} MiB")
        return value

    @field_validator("uki_sha256")
    @classmethod
    def _uki_sha256(cls, value: str) -> str:
        if not _HEX.match(value) or len(value) != 64:
            raise ValueError("not a lowercase sha256")
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: int) -> int:
        if value != FORMAT:
            raise ValueError(f"manifest format {value} is not supported (this is {FORMAT})")
        return value

    @field_validator("compatible", "image")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value) or len(value) > 128:
            raise ValueError("not a plain name (letters, digits, . _ + -, at most 128)")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion:
            raise ValueError("not a version (like 1.4.0)") from None
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("the image size must be positive")
        return value

    @field_validator("sha256", "root_hash", "salt")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _HEX.match(value) or len(value) % 2 or len(value) > 512:
            raise ValueError("not lowercase hex")
        return value

    def verity_params(self) -> VerityParams:
        try:
            return VerityParams(salt=bytes.fromhex(self.salt),
                                data_block_size=self.data_block_size,
                                hash_block_size=self.hash_block_size, hash_alg=self.hash_alg)
        except ValueError as e:
            raise InvalidArgument(f"bad verity parameters in the manifest: {e}") from None

    @property
    def padded_size(self) -> int:
        """The image rounded up to whole data blocks: what the tree covers."""
        return -(-self.size // self.data_block_size) * self.data_block_size

    def to_text(self) -> str:
        values = {k.upper(): str(v) for k, v in self.model_dump().items() if v is not None}
        return format_kv(values)


def parse_manifest(data: bytes) -> Manifest:
    if len(data) > MAX_MANIFEST:
        raise InvalidArgument("the manifest is too large to be one")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("the manifest is not UTF-8 text") from None
    values, problems = parse_kv(text)
    if problems:
        raise InvalidArgument(f"malformed manifest: {problems[0]}")
    try:
        manifest = Manifest.model_validate({k.lower(): v for k, v in values.items()})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]).upper()
        raise InvalidArgument(f"bad manifest field {where}: {first['msg']}") from None
    if len(manifest.sha256) != 64:
        raise InvalidArgument("bad manifest field SHA256: not a sha256")
    return manifest


def load_trusted_keys(keys_dir: Path = KEYS_DIR) -> dict[str, Ed25519PublicKey]:
    """The keys in keys.d; a file that is not one (too large, not a regular
    file, not PEM) is ignored, as a stray file in keys.d should be."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[str, Ed25519PublicKey] = {}
    try:
        paths = sorted(p for p in keys_dir.iterdir() if p.name.endswith(".pem"))
    except OSError:
        return keys
    if len(paths) > MAX_KEYS:
        log.warning("%s holds %d keys: only the first %d are read", keys_dir, len(paths),
                    MAX_KEYS)
    for path in paths[:MAX_KEYS]:
        try:
            key = serialization.load_pem_public_key(_read_key(path))
        except (ValueError, OSError, AnklumeError):
            log.warning("%s is not a public key: ignored", path)
            continue
        if isinstance(key, Ed25519PublicKey):
            keys[path.stem] = key
    return keys


def _read_key(path: Path) -> bytes:
    # O_NONBLOCK: a FIFO dropped in keys.d must not hang the update.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        return read_small(fd, MAX_KEY, "key")
    finally:
        os.close(fd)


def check_signature(manifest: bytes, signature: bytes,
                    keys: dict[str, Ed25519PublicKey]) -> str:
    """Return the name of the trusted key that signed ``manifest``."""
    from cryptography.exceptions import InvalidSignature

    if not keys:
        raise VerificationFailed("the bundle is signed but no trusted key is installed "
                                 f"in {KEYS_DIR}")
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VerificationFailed("the signature file is not base64") from None
    for name, key in keys.items():
        try:
            key.verify(raw, manifest)
        except InvalidSignature:
            continue
        return name
    raise VerificationFailed("the manifest's signature matches no trusted key")


def check_installable(manifest: Manifest, compatible: str, current_version: str | None,
                      allow_downgrade: bool) -> None:
    if manifest.compatible != compatible:
        raise InvalidArgument(f"this bundle is for {manifest.compatible!r}, "
                              f"this system is {compatible!r}")
    if current_version is None or allow_downgrade:
        return
    try:
        older = Version(manifest.version) < Version(current_version)
    except InvalidVersion:
        return  # the running version is unknown or odd: nothing to compare with
    if older:
        raise InvalidArgument(f"{manifest.version} is older than the running "
                              f"{current_version}; allow the downgrade to install it")


# ---- making bundles (the image builder's side) ----------------------------

def generate_key(private_path: Path) -> Path:
    """Write a new Ed25519 private key (0600) and its public key next to it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path = private_path.with_suffix(".pub.pem")
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return public_path


def create_bundle(image: Path, out_dir: Path, *, version: str, compatible: str,
                  signing_key: Path | None = None, build_id: str | None = None,
                  uki: tuple[str, Path] | None = None) -> Manifest:
    """Hash ``image`` and write NAME.squashfs, NAME.manifest (and .sig) to ``out_dir``.

    ``uki``: the path of the slot's UKI inside the image, and a copy of it
    to hash (the manifest pins it for the ESP)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    salt = os.urandom(32)
    params = VerityParams(salt=salt)
    sha = hashlib.sha256()
    hasher = VerityHasher(params)
    size = 0
    with hasher, image.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
            hasher.update(chunk)
        hasher.update(b"\0" * (-size % params.data_block_size))  # as it reads from the slot
        result = hasher.finish()
    name = f"anklume-{compatible}-{version}"
    manifest = Manifest(format=FORMAT, compatible=compatible, version=version,
                        image=f"{name}.squashfs", size=size, sha256=sha.hexdigest(),
                        root_hash=result.root_hash, salt=salt.hex(),
                        build_date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        build_id=build_id, **_uki_fields(uki))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / manifest.image
    if target.resolve() != image.resolve():
        with image.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
    text = manifest.to_text().encode()
    (out_dir / f"{name}.manifest").write_bytes(text)
    if signing_key is not None:
        key = serialization.load_pem_private_key(signing_key.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidArgument(f"{signing_key} is not an Ed25519 private key")
        (out_dir / f"{name}.manifest.sig").write_bytes(base64.b64encode(key.sign(text)) + b"\n")
    return manifest


def _uki_fields(uki: tuple[str, Path] | None) -> dict[str, object]:
    if uki is None:
        return {}
    path, copy = uki
    sha = hashlib.sha256()
    with copy.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return {"uki": path, "uki_size": copy.stat().st_size, "uki_sha256": sha.hexdigest()}
