"""What anklumed imports before it takes its bus name (README, bench.daemon's
start figure): libraries that only an update, a download or a data-disk
operation uses are imported where they are used, so every boot does not pay
for them (under QEMU TCG, or from a USB 2 stick, each module costs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Everything the daemon imports up to READY: main, then what _serve imports.
START = ("import sys, anklumed.main, anklumed.core.system, anklumed.service.app; "
         "print(' '.join(sorted(sys.modules)))")
# Used only when a kernel, a bundle's signature or a download is checked.
NOT_AT_START = ("cryptography", "requests", "urllib3", "http.client")


def test_the_daemon_start_does_not_import_what_only_an_update_uses() -> None:
    # A fresh interpreter: this test process has imported everything already.
    out = subprocess.run([sys.executable, "-c", START], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    assert [name for name in NOT_AT_START if name in out] == []


def test_the_daemon_start_imports_only_the_dbus_fixes_of_the_client_library() -> None:
    # anklume_client's proxies, models and words were 13 ms of the daemon's
    # 150 ms of imports on a fast host, for nothing: it needs only the fixes.
    out = subprocess.run([sys.executable, "-c", START], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    client = [name for name in out if name.split(".")[0] == "anklume_client"]
    assert client == ["anklume_client", "anklume_client.dbus_fixes"]
