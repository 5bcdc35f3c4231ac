"""A loopback HTTP(S) server for update bundles that misbehaves on request.

Tests point anklumed at it to prove the download survives what real servers
and networks do: connections dropped mid-image, stalls, lengths that lie,
Range requests ignored, a file replaced during the download. It also answers
as a forward proxy (absolute request URIs), so proxy settings from the
environment can be proven without leaving the machine. Loopback only.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class Faults:
    """What the server does to image requests; each list is consumed in order."""

    drop_at: list[int] = field(default_factory=list)  # close after sending to this offset
    stall_at: list[int] = field(default_factory=list)  # go silent at this offset
    stall_seconds: float = 5.0
    extra_length: int = 0  # added to Content-Length (a lie)
    ignore_range: bool = False  # answer Range requests with the whole file
    new_etag_after: int | None = None  # requests after which the ETag changes
    fail_first: int = 0  # answer 503 to this many requests first


@dataclass
class Seen:
    path: str
    range: str | None
    if_range: str | None
    absolute: bool  # asked as a proxy


class BundleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, faults: Faults | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.faults = faults or Faults()
        self.seen: list[Seen] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def use_tls(self, cert: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.scheme = "https"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up (anklumed reconnecting) is what tests make happen

    def image_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path.endswith(".squashfs")]


_RANGE = re.compile(r"bytes=(\d+)-$")


class _Handler(BaseHTTPRequestHandler):
    server: BundleServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: tests read .seen

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        with self.server.lock:
            self.server.requests += 1
            number = self.server.requests
            self.server.seen.append(Seen(parts.path, self.headers.get("Range"),
                                         self.headers.get("If-Range"), bool(parts.scheme)))
        faults = self.server.faults
        if number <= faults.fail_first:
            return self._status(503)
        file = self.server.root / Path(parts.path).name
        if not file.is_file():
            return self._status(404)
        data = file.read_bytes()
        etag = '"v2"' if faults.new_etag_after is not None and \
            number > faults.new_etag_after else '"v1"'
        start = self._range_start(etag, faults)
        if start is None:
            self.send_response(200)
            start = 0
        else:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        length = len(data) - start
        if file.suffix == ".squashfs":
            length += faults.extra_length
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._send(data, start, file.suffix == ".squashfs")

    def _range_start(self, etag: str, faults: Faults) -> int | None:
        match = _RANGE.match(self.headers.get("Range", ""))
        if not match or faults.ignore_range:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != etag:
            return None  # RFC 9110: the representation changed, send it whole
        return int(match[1])

    def _send(self, data: bytes, start: int, faulty: bool) -> None:
        faults = self.server.faults
        position = start
        while position < len(data):
            end = len(data)
            with self.server.lock:
                drop = next((d for d in faults.drop_at if d > position), None) if faulty else None
                stall = next((s for s in faults.stall_at if s > position), None) if faulty \
                    else None
            for limit in (drop, stall):
                if limit is not None:
                    end = min(end, limit)
            self.wfile.write(data[position:end])
            self.wfile.flush()
            position = end
            if position == drop:
                with self.server.lock:
                    faults.drop_at.remove(drop)
                self.close_connection = True
                return
            if position == stall:
                with self.server.lock:
                    faults.stall_at.remove(stall)
                time.sleep(faults.stall_seconds)
                self.close_connection = True
                return
        if faults.extra_length and faulty:
            self.close_connection = True  # the promised extra bytes never come

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def serving(root: Path, faults: Faults | None = None,
            tls: tuple[Path, Path] | None = None) -> Iterator[BundleServer]:
    server = BundleServer(root, faults)
    if tls:
        server.use_tls(*tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (cert, key): the CA a test may or may not trust."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anklume test server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
