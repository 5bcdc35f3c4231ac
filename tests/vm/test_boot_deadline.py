"""The boot-counter watchdog: a boot that never completes is rebooted.

This test runs here and boots its own guest: the scenario ends with the guest
rebooting itself, which the guest cannot report. A health check that fails
keeps boot-complete.target from being reached; anklumed must log why and
reboot at its deadline, and leave the boot count as it was (a failed attempt).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.vm import scenarios

pytestmark = pytest.mark.vm(mode="host")

FAILING_HEALTH_CHECK = """\
[Unit]
Description=A health check that fails (test)
Before=boot-complete.target
[Service]
Type=oneshot
ExecStart=/bin/false
[Install]
RequiredBy=boot-complete.target
WantedBy=multi-user.target
"""


def test_a_boot_that_never_completes_is_rebooted_at_the_deadline(tmp_path: Path) -> None:
    stick = tmp_path / "stick.img"
    result = scenarios.run(
        "systemd", ["sleep", "600"], timeout=300, keep_stick=stick,
        files={"anklumed.toml": "boot_deadline = 45\n",
               "units/anklume-test-unhealthy.service": FAILING_HEALTH_CHECK})
    console = (result.rundir / "console.log").read_text(errors="replace")
    assert not result.timed_out, result.explain()
    assert result.status is None  # the scenario never finished: the guest rebooted
    assert "boot did not complete within 45 s" in console
    assert "reboot: Restarting system" in console
    # The attempt stays counted: boot-count was not reset to 0.
    assert scenarios.read_persist_file(stick, "boot-count").strip() == "1"
    result.discard()
