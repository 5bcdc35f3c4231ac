"""Bundles over http(s): the manifest and signature fetched, the image streamed.

The stream survives what networks do to a long download: a dropped
connection or a stall resumes where it stopped with a Range request, tied to
the first response's ETag (If-Range) so a file replaced on the server is
never spliced onto the old one. TLS is verified (the system's CA bundle, or
REQUESTS_CA_BUNDLE), proxies come from the environment (HTTPS_PROXY,
NO_PROXY...), and every wait is bounded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from anklumed.errors import InvalidArgument, NotFound, VerificationFailed
from anklumed.slots.bundle import MAX_MANIFEST, MAX_SIGNATURE
from anklumed.slots.source import (
    Bundle,
    HttpSettings,
    ImageStream,
    Sleeper,
    checked,
    shown,
)

log = logging.getLogger(__name__)
NET_CHUNK = 256 * 1024


def _session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = "anklumed"
    # Compression would make lengths and Range offsets refer to other bytes.
    session.headers["Accept-Encoding"] = "identity"
    return session


def _manifest_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.path.endswith(".manifest"):
        return url
    if parts.path.endswith(".squashfs"):
        return urlunsplit(parts._replace(path=parts.path[: -len(".squashfs")] + ".manifest"))
    raise InvalidArgument("give the URL of the bundle's .manifest (or of its .squashfs)")


def _signature_url(manifest_url: str) -> str:
    parts = urlsplit(manifest_url)
    return urlunsplit(parts._replace(path=parts.path + ".sig"))


def _describe(e: Exception) -> str:
    """One sentence for a network failure, never a traceback."""
    if isinstance(e, requests.exceptions.SSLError):
        return "the server's TLS certificate could not be verified"
    if isinstance(e, requests.exceptions.ProxyError):
        return "the proxy refused or failed the connection"
    if isinstance(e, requests.exceptions.Timeout | ReadTimeoutError):
        return "the server did not answer in time"
    if isinstance(e, requests.exceptions.ConnectionError) and e.args and isinstance(
            e.args[0], str) and e.args[0].startswith("server answered"):
        return f"the {e.args[0]}"
    return "the connection failed or was dropped"


class _Retrier:
    """Attempts in a row without progress, with a doubling wait between them."""

    def __init__(self, settings: HttpSettings, sleep: Sleeper, what: str) -> None:
        self.settings, self.sleep, self.what = settings, sleep, shown(what)
        self.failures = 0

    def failed(self, why: str) -> None:
        self.failures += 1
        if self.failures >= self.settings.attempts:
            raise NotFound(f"could not download {self.what}: {why} "
                           f"({self.failures} attempts)")
        wait = min(30.0, self.settings.backoff * 2 ** (self.failures - 1))
        log.warning("downloading %s: %s; retrying in %.1f s", self.what, why, wait)
        self.sleep(wait)

    def progressed(self) -> None:
        self.failures = 0


def _fetch_small(session: requests.Session, url: str, settings: HttpSettings,
                 sleep: Sleeper, what: str, limit: int,
                 missing_ok: bool = False) -> bytes | None:
    """A manifest or a signature: bounded in size, retried on network errors."""
    retrier = _Retrier(settings, sleep, url)
    timeout = (settings.connect_timeout, settings.read_timeout)
    while True:
        try:
            with session.get(url, stream=True, timeout=timeout) as response:
                if response.status_code == 404 and missing_ok:
                    return None
                if response.status_code >= 500:
                    retrier.failed(f"the server answered {response.status_code}")
                    continue
                if response.status_code != 200:
                    raise NotFound(f"{shown(url)}: the server answered {response.status_code}")
                data = response.raw.read(limit + 1, decode_content=False)
                if len(data) > limit:
                    raise InvalidArgument(f"{shown(url)} is too large to be a {what} "
                                          f"(more than {limit} bytes): check the bundle")
                return bytes(data)
        except requests.exceptions.SSLError as e:
            raise VerificationFailed(f"{shown(url)}: {_describe(e)}") from None
        except (requests.RequestException, Urllib3Error, OSError) as e:
            retrier.failed(_describe(e))


def open_http(url: str, keys_dir: Path, settings: HttpSettings, sleep: Sleeper) -> Bundle:
    manifest_url = _manifest_url(url)
    session = _session()
    data = _fetch_small(session, manifest_url, settings, sleep, "manifest", MAX_MANIFEST)
    assert data is not None
    signature = _fetch_small(session, _signature_url(manifest_url), settings, sleep,
                             "signature", MAX_SIGNATURE, missing_ok=True)
    manifest, signed_by = checked(data, signature, keys_dir)
    image_url = urljoin(manifest_url, manifest.image)

    def open_image(sleep_: Sleeper) -> ImageStream:
        return HttpImage(session, image_url, manifest.size, settings, sleep_)

    return Bundle(manifest, signed_by, shown(image_url), open_image, data, signature)


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)$")


class HttpImage:
    """The image as a stream, reconnecting with Range where a connection broke."""

    def __init__(self, session: requests.Session, url: str, size: int,
                 settings: HttpSettings, sleep: Sleeper) -> None:
        self.session, self.url, self.size = session, url, size
        self.settings = settings
        self.retrier = _Retrier(settings, sleep, url)
        self.position = 0
        self.validator: str | None = None  # ETag (or Last-Modified) of the first response
        self.response: requests.Response | None = None

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the image."""
        parts: list[bytes] = []
        wanted = min(size, self.size - self.position)
        while wanted > 0:
            piece = self._read_some(min(wanted, NET_CHUNK))
            if not piece:
                break
            parts.append(piece)
            self.position += len(piece)
            wanted -= len(piece)
        return b"".join(parts)

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None
        self.session.close()

    def _read_some(self, size: int) -> bytes:
        while True:
            try:
                if self.response is None:
                    self.response = self._connect()
                # read1: what has arrived, so a stall after it loses nothing.
                piece = self.response.raw.read1(size, decode_content=False)
            except requests.exceptions.SSLError as e:
                raise VerificationFailed(f"{shown(self.url)}: {_describe(e)}") from None
            except (requests.RequestException, Urllib3Error, OSError) as e:
                # A drop, a stall or a server error: reconnect from here.
                self._drop(_describe(e))
                continue
            if piece:
                self.retrier.progressed()
                return bytes(piece)
            # End of this response before the end of the image: the server
            # closed early (or lied about the length). Resume from here.
            self._drop(f"the server stopped sending at byte {self.position}")

    def _drop(self, why: str) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None
        self.retrier.failed(why)

    def _connect(self) -> requests.Response:
        headers = {}
        if self.position:
            headers["Range"] = f"bytes={self.position}-"
            if self.validator:
                headers["If-Range"] = self.validator
        timeout = (self.settings.connect_timeout, self.settings.read_timeout)
        response = self.session.get(self.url, headers=headers, stream=True, timeout=timeout)
        try:
            self._check_response(response)
        except BaseException:
            response.close()
            raise
        return response

    def _check_response(self, response: requests.Response) -> None:
        status = response.status_code
        if status >= 500 or status == 429:
            raise requests.exceptions.ConnectionError(f"server answered {status}")
        if status == 206 and self.position:
            self._check_range(response.headers.get("Content-Range", ""))
        elif status == 200:
            self._check_whole(response)
        else:
            raise NotFound(f"{shown(self.url)}: the server answered {status}")

    def _check_whole(self, response: requests.Response) -> None:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != self.size:
            raise VerificationFailed(f"the server sends {length} bytes for the image, "
                                     f"its manifest says {self.size}")
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if self.position:
            # The server ignored our Range, or the file changed (If-Range failed).
            if self.validator and validator != self.validator:
                raise VerificationFailed("the image changed on the server during the download")
            self._skip(response, self.position)
        self.validator = validator

    def _check_range(self, content_range: str) -> None:
        match = _CONTENT_RANGE.match(content_range.strip())
        if not match or int(match[1]) != self.position or (
                match[3] != "*" and int(match[3]) != self.size):
            raise VerificationFailed(f"the server resumed the image with a wrong range "
                                     f"({content_range or 'none'}) at byte {self.position}")

    def _skip(self, response: requests.Response, count: int) -> None:
        """Discard what we already have from a response that restarted at 0."""
        log.info("%s: the server cannot resume; skipping %d bytes", shown(self.url), count)
        while count:
            piece = response.raw.read1(min(count, NET_CHUNK), decode_content=False)
            if not piece:
                raise requests.exceptions.ConnectionError("closed while skipping")
            count -= len(piece)
