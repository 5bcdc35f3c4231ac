"""A local bundle reaches anklumed as open files, under systemd and the real unit.

anklumed.service has PrivateTmp= and ProtectHome=: a bundle in the user's
/tmp is not at that path for anklumed. anklumectl opens it and passes the
files over the system bus (Manager.UpdateFromFiles), so anklumed reads the
very files; Manager.Update with the same path finds nothing there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from anklumed.slots import bundle
from devtools import stickimg
from devtools.slowness import scaled

pytestmark = pytest.mark.vm(mode="systemd")
VERIFICATION_FAILED = 8


def unsigned_bundle(where: Path) -> Path:
    image = stickimg.make_squashfs(where / "os.squashfs", "2.0.0", 0)
    m = bundle.create_bundle(image, where / "bundle", version="2.0.0",
                             compatible="anklume-live-amd64")
    return where / "bundle" / m.image.replace(".squashfs", ".manifest")


def test_a_bundle_in_the_users_tmp_is_read_through_passed_files() -> None:
    where = Path("/tmp/anklume-files-vm")
    where.mkdir(exist_ok=True)
    manifest = unsigned_bundle(where)
    # Through anklumectl: the files are passed open, anklumed reads the manifest
    # and stops at the missing signature (nothing written).
    proc = subprocess.run(["anklumectl", "--no-ask-password", "update", str(manifest)],
                          capture_output=True, text=True, timeout=scaled(120), check=False)
    assert proc.returncode == VERIFICATION_FAILED, proc.stderr
    assert "not signed: give its root hash with --verify-hash" in proc.stderr
    # The same path given to Manager.Update: anklumed's own /tmp has no such file.
    started = subprocess.run(
        ["busctl", "call", "org.anklume.Live1", "/org/anklume/Live1",
         "org.anklume.Live1.Manager", "Update", "ssb", str(manifest), "", "false"],
        capture_output=True, text=True, timeout=scaled(60), check=True)
    job = started.stdout.split('"')[1]
    for _ in range(100):
        state = subprocess.run(
            ["busctl", "get-property", "org.anklume.Live1", job, "org.anklume.Live1.Job",
             "Message"], capture_output=True, text=True, timeout=scaled(30), check=True).stdout
        if "nothing at" in state:
            break
        subprocess.run(["sleep", "0.2"], check=True)
    assert "anklumed sees its own /tmp" in state
