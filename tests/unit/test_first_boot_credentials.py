"""anklumectl first-boot without a person: the disk and the passphrase from
systemd credentials (automated installs, the image tier's boots); and the
filesystem any setup makes: the credential's or --fs, else the first
anklumed says this system can make."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from anklume_client.interface import DATA_DISK
from anklume_client.properties import complete
from anklumectl import data
from anklumectl.client import ClientError


def first_boot_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    data.add_setup_flags(parser)
    return parser.parse_args(list(argv))


def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **files: str) -> Path:
    for name, value in files.items():
        (tmp_path / name.replace("_", "-")).write_text(value)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    return tmp_path


def test_both_credentials_set_up_that_disk_encrypted_without_asking(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = credentials(tmp_path, monkeypatch, anklume_data_disk="/dev/nvme0n1\n",
                        anklume_data_passphrase="a long passphrase")
    a = first_boot_args("--encryption", "none")
    assert data.unattended(a)
    assert (a.disk, a.encryption, a.yes) == ("/dev/nvme0n1", "luks2", True)
    # The secret stays in its file: read when sent to anklumed, never in argv.
    assert a.passphrase_file == str(creds / "anklume-data-passphrase")


@pytest.mark.parametrize("files", [{}, {"anklume_data_passphrase": "pw"},
                                   {"anklume_data_disk": "/dev/nvme0n1"}])
def test_without_both_credentials_the_wizard_asks_a_person(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> None:
    credentials(tmp_path, monkeypatch, **files)
    a = first_boot_args()
    assert not data.unattended(a)
    assert (a.disk, a.passphrase_file, a.yes) == (None, None, False)


def test_a_disk_named_on_the_command_line_wins(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    credentials(tmp_path, monkeypatch, anklume_data_disk="/dev/nvme0n1",
                anklume_data_passphrase="pw")
    a = first_boot_args("--disk", "/dev/sdb")
    assert not data.unattended(a)
    assert a.disk == "/dev/sdb"


def test_outside_a_unit_there_are_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert data.credential(data.CREDENTIAL) is None and not data.unattended(first_boot_args())


@pytest.mark.parametrize("fs", ["zfs", "btrfs\n"])
def test_a_third_credential_names_the_filesystem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fs: str) -> None:
    """The default image carries ZFS: without this credential an unattended
    first boot made BTRFS whatever the image had (the ZFS image tier's boot)."""
    credentials(tmp_path, monkeypatch, anklume_data_disk="/dev/nvme0n1",
                anklume_data_passphrase="pw", anklume_data_fs=fs)
    a = first_boot_args()
    assert data.unattended(a)
    assert a.fs == fs.strip()


def probed(*offered: str) -> dict[str, object]:
    """What anklumed says of the filesystems once it looked (DataDisk.Filesystems)."""
    return {"DisksProbed": True, "Filesystems": list(offered)}


@pytest.mark.parametrize(("offered", "made"), [(("zfs", "btrfs"), "zfs"), (("btrfs",), "btrfs")])
def test_without_the_filesystem_credential_it_is_the_first_the_system_can_make(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offered: tuple[str, ...],
        made: str) -> None:
    """A --zfs image makes ZFS; one without it (--no-zfs, Arch, the module
    refused under Secure Boot) BTRFS. It was BTRFS everywhere."""
    credentials(tmp_path, monkeypatch, anklume_data_disk="/dev/nvme0n1",
                anklume_data_passphrase="pw")
    a = first_boot_args()
    assert data.unattended(a)
    assert data.filesystem(probed(*offered), a.fs) == made


def test_fs_not_given_is_the_first_the_system_can_make() -> None:
    assert data.filesystem(probed("zfs", "btrfs"), first_boot_args().fs) == "zfs"
    assert data.filesystem(probed("zfs", "btrfs"), first_boot_args("--fs", "btrfs").fs) \
        == "btrfs"


def test_zfs_asked_where_the_system_cannot_make_it_is_refused_before_anything() -> None:
    with pytest.raises(ClientError, match="cannot make zfs") as refused:
        data.filesystem(probed("btrfs"), "zfs")
    assert refused.value.name.endswith("NotFound")
    assert "Secure Boot" in refused.value.message and "Choose btrfs" in refused.value.message


def test_no_filesystem_known_before_the_probe_is_not_taken_for_none() -> None:
    with pytest.raises(ClientError, match="not finished looking") as busy:
        data.filesystem({"DisksProbed": False, "Filesystems": []}, None)
    assert busy.value.name.endswith("Busy")
    with pytest.raises(ClientError, match="neither ZFS nor BTRFS"):
        data.filesystem(probed(), None)


def test_a_filesystem_credential_naming_none_stops_before_any_disk_is_erased(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials(tmp_path, monkeypatch, anklume_data_disk="/dev/nvme0n1",
                anklume_data_passphrase="pw", anklume_data_fs="ext4")
    a = first_boot_args()
    with pytest.raises(ClientError, match="anklume-data-fs") as raised:
        data.unattended(a)
    assert raised.value.name.endswith("InvalidArgument")
    assert a.yes is False  # nothing set for the setup


def imported_credentials(unit_dir: Path) -> set[str]:
    """The credentials a unit's drop-ins import (one ImportCredential= a line)."""
    return {line.partition("=")[2].strip() for dropin in unit_dir.glob("*.conf")
            for line in dropin.read_text().splitlines()
            if line.startswith("ImportCredential=")}


def test_the_first_boot_unit_imports_every_credential_the_wizard_reads() -> None:
    dropins = Path(__file__).parents[2] / "units/anklume-first-boot.service.d"
    assert imported_credentials(dropins) >= {data.DISK_CREDENTIAL, data.CREDENTIAL,
                                            data.FS_CREDENTIAL}


def test_an_older_daemon_keeps_its_default() -> None:
    # Before revision 3 anklumed did not say: BTRFS, its default, as before.
    props = complete(DATA_DISK, {"DisksProbed": True})
    assert "Filesystems" in props.missing
    assert data.filesystem(props, None) == "btrfs" and data.filesystem(props, "zfs") == "zfs"


class ModprobedDaemon:
    """FAKE anklumed that last looked before `modprobe zfs`: it offers ZFS
    once asked to look again (Refresh) if ``loaded``."""

    def __init__(self, loaded: bool) -> None:
        self.loaded, self.looked_again = loaded, False

    async def call(self, path: str, iface: str, member: str, signature: str = "",
                   body: list[Any] | None = None, mutating: bool = False,
                   unix_fds: list[int] | None = None) -> list[Any]:
        if member == "Refresh":
            self.looked_again = True
            return []
        assert member == "GetAll"
        zfs = ["zfs"] if self.loaded and self.looked_again else []
        return [{"DisksProbed": True, "Filesystems": [*zfs, "btrfs"]}]


@pytest.mark.parametrize("loaded", [True, False])
def test_a_filesystem_asked_and_not_offered_is_looked_for_again_first(loaded: bool) -> None:
    daemon = ModprobedDaemon(loaded)
    if loaded:
        _props, fs = asyncio.run(data.setup_props(daemon, "zfs"))  # type: ignore[arg-type]
        assert fs == "zfs"
    else:
        with pytest.raises(ClientError, match="cannot make zfs"):
            asyncio.run(data.setup_props(daemon, "zfs"))  # type: ignore[arg-type]
    assert daemon.looked_again


def test_the_default_is_not_looked_for_again() -> None:
    daemon = ModprobedDaemon(loaded=True)
    assert asyncio.run(data.setup_props(daemon, None))[1] == "btrfs"  # type: ignore[arg-type]
    assert not daemon.looked_again
