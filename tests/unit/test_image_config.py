"""The image builder's checks that come before any build work (no root, no network)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from anklume_image import cli, esp, packages, rootfs
from anklume_image.build import build, check_output
from anklume_image.config import BuildConfig, Desktop
from anklume_image.errors import BuildError
from anklume_image.signing import public_key_of
from anklumed.slots import bundle


def test_the_mirror_is_the_one_apt_uses(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    assert rootfs.host_mirror(tmp_path, tmp_path / "none") == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rootfs.host_mirror(empty, one_line) == "http://other.example/debian"
    assert rootfs.host_mirror(empty, tmp_path / "none") == rootfs.FALLBACK_MIRROR


def test_the_package_cache_follows_its_inputs(tmp_path: Path) -> None:
    config = BuildConfig(out=tmp_path / "x.img")
    minimal = rootfs.cache_key(config, "m", packages.debian_packages(config))
    sway = config.model_copy(update={"desktop": Desktop.SWAY})
    assert rootfs.cache_key(sway, "m", packages.debian_packages(sway)) != minimal
    assert rootfs.cache_key(config, "other", packages.debian_packages(config)) != minimal
    assert rootfs.cache_key(config, "m", packages.debian_packages(config)) == minimal


def test_all_desktops_and_zfs_choose_their_packages(tmp_path: Path) -> None:
    everything = packages.debian_packages(BuildConfig(out=tmp_path / "x", desktop=Desktop.ALL))
    assert {"sway", "labwc", "plasma-desktop", "zfs-dkms"} <= set(everything)
    bare = packages.debian_packages(BuildConfig(out=tmp_path / "x", zfs=False))
    assert "zfs-dkms" not in bare and "python3-pydantic" in bare
    assert packages.components(BuildConfig(out=tmp_path / "x", zfs=False)) == ["main"]


@pytest.mark.parametrize(("field", "value"), [
    ("suite", "trixie; rm -rf /"), ("arch", "sparc"), ("slot_mib", 1), ("desktop", "gnome")])
def test_bad_options_are_refused(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        BuildConfig.model_validate({"out": tmp_path / "x.img", field: value})


def test_an_unknown_desktop_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["build", "--out", "x.img", "--desktop", "gnome"])
    assert exit_.value.code == 2
    assert "invalid choice: 'gnome'" in capsys.readouterr().err


def test_a_signing_key_that_does_not_parse_stops_the_build_before_it_starts(
        tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    config = BuildConfig(out=tmp_path / "x.img", signing_key=bad)
    with pytest.raises(BuildError, match="not an unencrypted PEM private key"):
        build(config)
    assert not config.work_dir.exists()
    with pytest.raises(BuildError, match="cannot read the signing key"):
        public_key_of(tmp_path / "missing.pem")
    good = tmp_path / "good.pem"
    public = bundle.generate_key(good)
    assert public_key_of(good) == public.read_bytes()


def test_a_build_never_writes_a_disk(tmp_path: Path) -> None:
    node = tmp_path / "sdz"
    if os.geteuid() == 0:
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 200))  # never opened
        with pytest.raises(BuildError, match="is a block device"):
            check_output(node)
    with pytest.raises(BuildError, match="is a directory"):
        check_output(tmp_path)
    with pytest.raises(BuildError, match="does not exist"):
        check_output(tmp_path / "missing" / "x.img")
    check_output(tmp_path / "fine.img")


def test_every_boot_entry_names_this_sticks_persist() -> None:
    entries = esp.entries("1234-abcd")
    # Slot B is empty on a new stick: it has no kernel, so no entry.
    assert sorted(entries) == ["anklume-1-live-a+3-0.conf", "anklume-3-stick-a.conf",
                               "anklume-4-slot-a.conf"]
    for text in entries.values():
        # @N: the UKI's profile (its command line under Secure Boot)
        assert " boot=anklume anklume.persist=PARTUUID=1234-abcd anklume.kernel=A" in text
        assert "\noptions @" in text
        assert "linux /EFI/anklume/slot-a.efi" in text


def test_the_cli_takes_source_date_epoch_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.parser().parse_args(["build", "--out", str(tmp_path / "x.img")])
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    assert cli.config_from(args).source_date_epoch == 1_767_225_600
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert cli.config_from(args).source_date_epoch is None


def test_a_source_date_epoch_that_is_not_seconds_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "2026-01-01")
    assert cli.main(["build", "--out", str(tmp_path / "x.img")]) == 1
    err = capsys.readouterr().err
    assert "SOURCE_DATE_EPOCH='2026-01-01' is not a number of seconds" in err
    assert not (tmp_path / "x.img").exists()
