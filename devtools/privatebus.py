"""A private dbus-daemon configured like the system bus.

It uses the system bus's default-deny policy plus the product's own policy file
from dbus/, so tests exercise the real bus policy. Activation is off (no
service directories): every service is started explicitly.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from devtools.slowness import scaled

REPO = Path(__file__).resolve().parent.parent

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <!-- Test stand-in for polkitd, which owns this name on a real system. -->
  <policy user="root">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
  <include>{product_policy}</include>
  <limit name="max_replies_per_connection">1024</limit>
</busconfig>
"""


class PrivateBus:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # An abstract socket: unprivileged test clients reach it whatever the
        # permissions of the work directory.
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateBus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "bus.conf"
        config.write_text(_CONFIG.format(
            product_policy=REPO / "dbus" / "org.anklume.Live1.conf"))
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", f"--print-address={write}"],
            pass_fds=(write,), stdin=subprocess.DEVNULL,
            # Its complaints (e.g. about fd limits in a container) go to a file.
            stderr=(self.workdir / "dbus-daemon.log").open("ab"),
        )
        os.close(write)
        with os.fdopen(read) as f:
            printed = f.readline().strip()
        if not printed:
            raise RuntimeError("dbus-daemon did not start")
        self.address = printed
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(scaled(10))
