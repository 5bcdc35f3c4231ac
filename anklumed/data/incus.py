"""Incus, through its REST API on the local unix socket (no CLI parsing).

Only what the data disk needs: a storage pool on the data disk, and stopping
the service before the disk is locked. Everything is skipped, and said so,
when Incus is not installed.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

from anklumed.command import CommandError, run
from anklumed.errors import Failed
from anklumed.persist import PersistDir

log = logging.getLogger(__name__)
TIMEOUT = 60.0


def request(socket_path: Path, method: str, path: str,
            body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One REST call; Incus answers {"type": "sync"|"error", "metadata": ...}."""
    # Imported here: http.client loads ssl, megabytes of resident memory
    # the daemon would otherwise carry all day for a call made at setup.
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT)
            sock.connect(str(socket_path))
            self.sock = sock

    connection = UnixConnection("incus", timeout=TIMEOUT)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload,
                           headers={"Content-Type": "application/json"})
        answer = json.loads(connection.getresponse().read() or b"{}")
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise Failed(f"Incus did not answer on {socket_path}: {e}") from None
    finally:
        connection.close()
    if not isinstance(answer, dict):
        raise Failed("Incus sent an unexpected answer")
    if answer.get("type") == "error":
        raise Failed(f"Incus refused {method} {path}: {answer.get('error', 'no reason')}")
    return answer


SYSTEMD_RUNTIME = Path("/run/systemd/system")  # exists when systemd is PID 1


def running(socket_path: Path) -> bool:
    """Incus answers on its socket now. Under systemd the socket is systemd's
    (socket activation): it exists from early boot, and a request to it starts
    incus.service -- which is ordered after the data disk's units, hence after
    the first-boot setup making the request: the request waits for the setup
    that waits for it, until its timeout (the image's unattended first boot
    failed so). So a socket counts only with incus.service active."""
    if not socket_path.exists():
        return False
    if not SYSTEMD_RUNTIME.is_dir():
        return True  # no systemd: whoever made the socket answers on it
    proc = run(["systemctl", "is-active", "--quiet", "incus.service"], timeout=30, check=False)
    return proc.returncode == 0


def create_storage_pool(socket_path: Path, name: str, driver: str, source: str) -> None:
    existing = request(socket_path, "GET", "/1.0/storage-pools").get("metadata") or []
    if f"/1.0/storage-pools/{name}" in existing:
        return  # a retried setup: already there
    request(socket_path, "POST", "/1.0/storage-pools",
            {"name": name, "driver": driver, "config": {"source": source},
             "description": "anklume Live data disk"})


PENDING_POOL = "incus-pool.env"  # on the data disk; units/anklume-incus-pool.service


def write_pending_pool(data_root: Path, name: str, driver: str, source: str) -> Path:
    """The storage pool Incus should get once it runs, as a systemd
    EnvironmentFile at the data disk's root: anklume-incus-pool.service makes
    the pool after incus.service starts (in this boot or, after a power cut,
    the next one) and removes the file. Written atomically."""
    for value in (name, driver, source):
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", value):
            raise Failed(f"unexpected character in Incus pool setting {value!r}")
    text = f"POOL={name}\nDRIVER={driver}\nSOURCE={source}\n"
    PersistDir(data_root, writable=True).write_text(PENDING_POOL, text)
    return data_root / PENDING_POOL


SOCKET_UNITS = ("incus.socket", "incus-user.socket")


def listen_again() -> None:
    """After the data disk's state is bound over /var/lib/incus: systemd's
    incus.socket has listened there since early boot, and the bind hides its
    node, so no client reaches Incus nor starts it (seen on the image: "The
    incus daemon doesn't appear to be started"). Restarted while incus.service
    is not running, the socket units listen again, in the bound directory.
    A running Incus keeps the descriptor it was given: left alone."""
    if not SYSTEMD_RUNTIME.is_dir():
        return  # not booted with systemd: no socket units
    if run(["systemctl", "is-active", "--quiet", "incus.service"], timeout=30,
           check=False).returncode == 0:
        return
    try:
        run(["systemctl", "try-restart", *SOCKET_UNITS], timeout=120)
    except CommandError as e:
        # The data is mounted by now: a socket that cannot be restarted is
        # said, not a failed unlock (5: no such unit; 127: no systemctl).
        if e.returncode not in (5, 127):
            log.warning("Incus's socket could not listen again over the data disk: %s", e)


def stop_service() -> None:
    """Stop Incus (service and socket) so nothing holds the data disk."""
    if not SYSTEMD_RUNTIME.is_dir():
        return  # not booted with systemd: no Incus service to stop
    try:
        run(["systemctl", "stop", "incus.service", "incus.socket"], timeout=120)
    except CommandError as e:
        if e.returncode not in (5, 127):  # 5: no such unit; 127: no systemctl
            raise
