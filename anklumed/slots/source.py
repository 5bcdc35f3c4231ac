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

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from anklumed.errors import InvalidArgument, VerificationFailed
from anklumed.slots.bundle import (
    MAX_MANIFEST,
    MAX_SIGNATURE,
    Manifest,
    check_signature,
    load_trusted_keys,
    parse_manifest,
)
from anklumed.slots.local_files import FdImage, LocalFiles, Reader, open_path, read_small, regular


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
    try:
        parts = urlsplit(source)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the URL"  # malformed: nothing of it is safe to show
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def is_url(source: str) -> bool:
    return _SCHEME.match(source) is not None and source.split(":", 1)[0].lower() in (
        "http", "https")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SOURCE_MAX = 4096  # PATH_MAX: no longer path can be opened, nor URL is reasonable


def check_source(source: str) -> str:
    """A source as a caller gave it, refused unless it can name a bundle.

    Nothing of a URL is echoed but its scheme: it may hold a password.
    """
    if not source.strip():
        raise InvalidArgument("no update source given: give the path or the http(s) URL "
                              "of a bundle's .manifest")
    if len(source) > SOURCE_MAX:
        raise InvalidArgument(f"the update source is {len(source)} characters long, more "
                              f"than a path or URL can be ({SOURCE_MAX}): check it")
    if any(ord(c) < 32 or ord(c) == 127 for c in source):
        raise InvalidArgument("the update source contains a control character (a line "
                              "break, a tab, a NUL): rename the file or fix the URL")
    scheme = _SCHEME.match(source)
    if scheme is None:
        return source
    name = scheme[0][:-3].lower()
    if name not in ("http", "https"):
        raise InvalidArgument(f"{name[:20]}:// sources are not supported: give a local "
                              "path or an http(s) URL")
    _check_url(source)
    return source


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidArgument("the URL's host is malformed (an IPv6 address whose [ ] do "
                              "not close?): fix the URL") from None
    try:
        port = parts.port
    except ValueError:
        raise InvalidArgument("the URL's port is not a number from 1 to 65535: "
                              "fix the URL") from None
    if port == 0:
        raise InvalidArgument("the URL's port is 0: give a port from 1 to 65535")
    if not parts.hostname:
        raise InvalidArgument("the URL has no host: give the bundle's full http(s) URL")
    if not parts.path.endswith((".manifest", ".squashfs")):
        raise InvalidArgument("give the URL of the bundle's .manifest (or of its .squashfs)")


def open_bundle(source: str, keys_dir: Path, settings: HttpSettings, sleep: Sleeper,
                files: LocalFiles | None = None) -> Bundle:
    """The bundle at ``source``; a local one from ``files`` when given (open,
    and closed by whoever opened them; ``source`` is then only a name).

    Without ``files``, a local path is opened with anklumed's own rights and
    closed with the image stream: for anklumed's own tools, never a caller.
    """
    if files is not None:
        return open_local(files, keys_dir)
    check_source(source)
    if is_url(source):
        # Imported here: requests costs a second of start-up on a slow machine,
        # and most boots never download.
        from anklumed.slots.http_source import open_http

        return open_http(source, keys_dir, settings, sleep)
    opened = open_path(Path(source), None)
    try:
        return open_local(opened, keys_dir, close_with_image=True)
    except BaseException:
        opened.close()
        raise


def open_local_source(source: str, reader: Reader | None) -> LocalFiles | None:
    """A local source opened with ``reader``'s rights; None for a URL."""
    if is_url(check_source(source)):
        return None
    return open_path(Path(source), reader)


def checked(data: bytes, signature: bytes | None, keys_dir: Path) -> tuple[Manifest, str | None]:
    manifest = parse_manifest(data)
    signed_by = None
    if signature is not None:
        signed_by = check_signature(data, signature, load_trusted_keys(keys_dir))
    return manifest, signed_by


def open_local(files: LocalFiles, keys_dir: Path, close_with_image: bool = False) -> Bundle:
    """A local bundle from its open files (closed by the caller, or with the
    image stream if ``close_with_image``)."""
    data = read_small(files.manifest, MAX_MANIFEST, "manifest")
    signature = None if files.signature is None else read_small(
        files.signature, MAX_SIGNATURE, "signature")
    manifest, signed_by = checked(data, signature, keys_dir)
    image = files.image_fd(manifest.image)
    size = regular(image, "image").st_size
    if size < manifest.size:
        raise VerificationFailed(f"the image is truncated: {size} of {manifest.size} bytes")
    if size > manifest.size:
        raise VerificationFailed(f"the image is longer than its manifest says ({size} "
                                 f"bytes, not {manifest.size})")

    def open_image(_sleep: Sleeper) -> ImageStream:
        return FdImage(image, files if close_with_image else None)

    return Bundle(manifest, signed_by, files.name, open_image, data, signature)
