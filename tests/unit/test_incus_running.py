"""Incus counts as running only when asking it cannot wait for the setup
itself: under systemd its socket exists from early boot, and a request to it
starts incus.service, ordered after the data disk's units (the image's
unattended first boot waited for itself until its timeout)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from anklumed.data import incus


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    made: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        made.append(argv)
        return subprocess.CompletedProcess(argv, 3, "", "")  # is-active: 3, inactive

    monkeypatch.setattr(incus, "run", fake_run)
    monkeypatch.setattr(incus, "SYSTEMD_RUNTIME", tmp_path / "systemd")
    return made


def socket_file(tmp_path: Path) -> Path:
    sock = tmp_path / "unix.socket"
    sock.touch()
    return sock


def test_no_socket_is_not_running(tmp_path: Path, calls: list[list[str]]) -> None:
    assert not incus.running(tmp_path / "absent.socket")
    assert calls == []


def test_without_systemd_a_socket_is_incus_answering(tmp_path: Path,
                                                      calls: list[list[str]]) -> None:
    assert incus.running(socket_file(tmp_path))
    assert calls == []


def test_under_systemd_an_inactive_service_is_not_running(tmp_path: Path,
                                                          calls: list[list[str]]) -> None:
    (tmp_path / "systemd").mkdir()
    assert not incus.running(socket_file(tmp_path))
    assert calls == [["systemctl", "is-active", "--quiet", "incus.service"]]


def test_under_systemd_an_active_service_is_running(tmp_path: Path, calls: list[list[str]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "systemd").mkdir()
    monkeypatch.setattr(incus, "run", lambda argv, **_: subprocess.CompletedProcess(argv, 0))
    assert incus.running(socket_file(tmp_path))
