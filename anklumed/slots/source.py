"""Where an update bundle comes from: a local path or an http(s) URL.

A bundle is a manifest (``NAME.manifest``), an optional signature beside it
(``NAME.manifest.sig``) and the image the manifest names. The manifest and
signature are small and read whole; the image is only ever streamed, chunk
by chunk, into the slot (nothing the size of the image is held in memory).

Over HTTP (http_source.py) the stream survives what networks do to a long
download. Whatever a server says, the dm-verity root hash and the sha256
decide at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

from anklumed.errors import InvalidArgument, NotFound
from anklumed.slots.bundle import Manifest, check_signature, load_trusted_keys, parse_manifest

MANIFEST_MAX = 64 * 1024


@dataclass(frozen=True)
class HttpSettings:
    connect_timeout: float = 15.0
    read_timeout: float = 30.0  # a stall longer than this reconnects
    attempts: int = 6  # in a row without progress, before giving up
    backoff: float = 1.0  # first wait between attempts; doubles, capped at 30 s


class ImageStream(Protocol):
    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


# Sleeps between attempts; raises Cancelled when the job is cancelled meanwhile.
Sleeper = Callable[[float], None]


@dataclass(frozen=True)
class Bundle:
    manifest: Manifest
    signed_by: str | None
    location: str  # where the image is, for messages and the slot's meta
    open_image: Callable[[Sleeper], ImageStream]
    # The manifest and signature exactly as read: kept on PERSIST at
    # activation so the initramfs can verify the meta against them.
    manifest_bytes: bytes = b""
    signature: bytes | None = None


def shown(source: str) -> str:
    """The source as logged, stored and shown: a URL loses its user:password@
    and its query string (tokens of signed URLs live there)."""
    if not is_url(source):
        return source
    parts = urlsplit(source)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}" \
        f"{parts.path}"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def open_bundle(source: str, keys_dir: Path, settings: HttpSettings,
                sleep: Sleeper) -> Bundle:
    if is_url(source):
        # Imported here: requests costs a second of start-up on a slow machine,
        # and most boots never download.
        from anklumed.slots.http_source import open_http

        return open_http(source, keys_dir, settings, sleep)
    if "://" in source:
        raise InvalidArgument(f"unsupported source {source.split('://')[0]}://: "
                              "give a path or an http(s) URL")
    return _open_local(Path(source), keys_dir)


def checked(data: bytes, signature: bytes | None, keys_dir: Path) -> tuple[Manifest, str | None]:
    manifest = parse_manifest(data)
    signed_by = None
    if signature is not None:
        signed_by = check_signature(data, signature, load_trusted_keys(keys_dir))
    return manifest, signed_by


def _open_local(path: Path, keys_dir: Path) -> Bundle:
    """The path of the manifest, or of the image beside one."""
    if path.suffix != ".manifest":
        path = path.with_suffix(".manifest")
    if not path.is_file():
        raise NotFound(f"no bundle manifest at {path}")
    if path.stat().st_size > MANIFEST_MAX:
        raise InvalidArgument(f"{path} is too large to be a manifest")
    signature_path = path.with_name(path.name + ".sig")
    data = path.read_bytes()
    signature = signature_path.read_bytes() if signature_path.exists() else None
    manifest, signed_by = checked(data, signature, keys_dir)
    image = path.with_name(manifest.image)
    if not image.is_file():
        raise NotFound(f"the bundle's image {image.name} is missing beside its manifest")

    def open_image(_sleep: Sleeper) -> ImageStream:
        stream: BinaryIO = image.open("rb")
        return stream

    return Bundle(manifest, signed_by, str(image), open_image, data, signature)
