"""Incus counts as running only when asking it cannot wait for the setup
itself: under systemd its socket exists from early boot, and a request to it
starts incus.service, ordered after the data disk's units (the image's
unattended first boot waited for itself until its timeout)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from anklumed.command import CommandError
from anklumed.data import incus
from anklumed.errors import Failed


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


def test_a_pool_for_later_is_written_whole_for_its_unit(tmp_path: Path) -> None:
    """The first boot's setup, Incus not running yet: the pool's settings wait
    on the data disk for units/anklume-incus-pool.service (an EnvironmentFile)."""
    written = incus.write_pending_pool(tmp_path, "anklume", "btrfs", "/mnt/anklume-data/incus")
    assert written == tmp_path / incus.PENDING_POOL
    assert written.read_text() == \
        "POOL=anklume\nDRIVER=btrfs\nSOURCE=/mnt/anklume-data/incus\n"
    assert [p.name for p in tmp_path.iterdir()] == [incus.PENDING_POOL]  # no temporary left


@pytest.mark.parametrize("source", ["/mnt/a b", "/mnt/x\nPOOL=other", "/mnt/'q'", "$HOME"])
def test_a_pool_setting_the_unit_would_misread_is_refused(tmp_path: Path, source: str) -> None:
    with pytest.raises(Failed):
        incus.write_pending_pool(tmp_path, "anklume", "btrfs", source)
    assert list(tmp_path.iterdir()) == []


def test_the_sockets_listen_again_in_the_bound_directory(tmp_path: Path,
                                                         calls: list[list[str]]) -> None:
    """The bind over /var/lib/incus hid incus.socket's node: restarted while
    incus.service is not running (the fake answers 'inactive')."""
    (tmp_path / "systemd").mkdir()
    incus.listen_again()
    assert calls == [["systemctl", "is-active", "--quiet", "incus.service"],
                     ["systemctl", "try-restart", "incus.socket", "incus-user.socket"]]


def test_a_running_incus_keeps_its_socket(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[list[str]] = []

    def active(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        made.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(incus, "run", active)
    monkeypatch.setattr(incus, "SYSTEMD_RUNTIME", tmp_path)
    incus.listen_again()
    assert made == [["systemctl", "is-active", "--quiet", "incus.service"]]


def test_without_systemd_no_socket_unit_is_touched(tmp_path: Path,
                                                   calls: list[list[str]]) -> None:
    incus.listen_again()
    assert calls == []


def test_a_socket_that_cannot_restart_is_said_not_a_failed_unlock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def failing(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        if "try-restart" in argv:
            raise CommandError(argv, 1, "Unit incus.socket is masked.")
        return subprocess.CompletedProcess(argv, 3, "", "")

    monkeypatch.setattr(incus, "run", failing)
    monkeypatch.setattr(incus, "SYSTEMD_RUNTIME", tmp_path)
    incus.listen_again()
    assert "could not listen again" in caplog.text
