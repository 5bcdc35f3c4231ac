"""The daemon's dbus-fast fixes (anklumed/service/dbus_fixes.py): its own two
(error replies) on top of every connection's (anklume_client/dbus_fixes.py,
tested in tests/unit/test_client_dbus_fixes.py), under the same version check.
What they do is tested on the real daemon (tests/service/test_robustness.py,
test_bus_boundary.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from anklume_client import dbus_fixes as client_fixes
from anklumed.errors import Failed
from anklumed.service import dbus_fixes

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version", ["2.44.0", "3.0.0"])
def test_the_daemon_refuses_an_untested_dbus_fast(monkeypatch: pytest.MonkeyPatch,
                                                  version: str) -> None:
    monkeypatch.setattr(client_fixes, "installed_version", version)
    with pytest.raises(Failed, match=f"anklumed cannot start: dbus-fast {version} is outside"):
        dbus_fixes.apply()


# What the daemon's service layer has once imported, in a fresh interpreter:
# this test process has imported every module already.
INSTALLED = """
import anklumed.service
from dbus_fast.aio.message_bus import MessageBus, _MessageWriter
from dbus_fast.send_reply import SendReply
for method in (_MessageWriter.write_callback, MessageBus._reply_handler, SendReply._exit,
               MessageBus._future_exception_no_reply):
    print(method.__module__, method.__name__)
"""


def test_the_daemon_has_all_four() -> None:
    out = subprocess.run([sys.executable, "-c", INSTALLED], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert out.splitlines() == [
        "anklume_client.dbus_fixes _write_callback", "anklume_client.dbus_fixes _reply_handler",
        "anklumed.service.dbus_fixes _exit",
        "anklumed.service.dbus_fixes _future_exception_no_reply"]
