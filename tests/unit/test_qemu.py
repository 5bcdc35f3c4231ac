"""Which TCG a test machine gets (devtools/qemu.py): one host thread for a
guest of several vCPUs on a QEMU older than 8.1, whose multi-threaded TCG
races with the guest kernel's code patching (it panicked an image-tier boot)."""

from __future__ import annotations

import pytest

from devtools import qemu

DEBIAN_12 = ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"
             "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n")
BACKPORTS = ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"
             "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n")


def test_the_version_is_read_from_qemus_own_words() -> None:
    assert qemu.parse_version(DEBIAN_12) == (7, 2)
    assert qemu.parse_version(BACKPORTS) == (10, 0)


def test_output_without_a_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="no QEMU version"):
        qemu.parse_version("qemu-system-x86_64: command not found\n")


@pytest.mark.parametrize(("version", "cpus", "single"), [
    ((7, 2), 2, True), ((8, 0), 4, True),  # before deba78709a: the race
    ((8, 1), 2, False), ((10, 0), 2, False),  # fixed: one host thread per vCPU
    ((7, 2), 1, False),  # one vCPU: nothing to race with, and already one thread
])
def test_only_a_qemu_before_the_fix_runs_several_vcpus_on_one_thread(
        version: tuple[int, int], cpus: int, single: bool) -> None:
    assert qemu.single_threaded(version, cpus) is single


@pytest.mark.parametrize(("output", "accel"), [(DEBIAN_12, "tcg,thread=single"),
                                                (BACKPORTS, "tcg")])
def test_the_command_asks_for_the_tcg_the_installed_qemu_needs(
        monkeypatch: pytest.MonkeyPatch, output: str, accel: str) -> None:
    monkeypatch.setattr(qemu, "installed_version", lambda: qemu.parse_version(output))
    argv = qemu.command(2)
    assert argv[0] == qemu.QEMU
    assert argv[argv.index("-accel") + 1] == accel
    assert argv[argv.index("-smp") + 1] == "2"
