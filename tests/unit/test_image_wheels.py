"""The pinned wheels (anklume_image/wheels.py): fetched, checked against their
pin and their RECORD, unpacked only when whole. A wheel made here and served
from a file:// URL stands for PyPI (no network)."""

from __future__ import annotations

import base64
import hashlib
import io
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from anklume_image import install, rootfs, wheels
from anklume_image.build import build
from anklume_image.config import Base, BuildConfig, Desktop
from anklume_image.errors import BuildError

ROOT = Path(__file__).resolve().parents[2]
DIST_INFO = "demo_pkg-1.0.dist-info"


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
        b"=").decode()


def make_wheel(files: dict[str, bytes] | None = None, record_lies: bool = False,
               tag: str = "py3-none-any") -> bytes:
    """A small wheel of the package demo-pkg 1.0, its RECORD true unless told."""
    members = {"demo_pkg/__init__.py": b"VALUE = 1\n",
               f"{DIST_INFO}/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
               f"{DIST_INFO}/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                     f"Tag: {tag}\n".encode(),
               **(files or {})}
    record = "".join(f"{name},{_digest(b'lie' if record_lies else data)},{len(data)}\n"
                     for name, data in members.items()) + f"{DIST_INFO}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in {**members, f"{DIST_INFO}/RECORD": record.encode()}.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def pin_of(data: bytes, where: Path, sha256: str | None = None) -> wheels.PinnedWheel:
    served = where / "demo_pkg-1.0-py3-none-any.whl"
    served.parent.mkdir(parents=True, exist_ok=True)
    served.write_bytes(data)
    return wheels.PinnedWheel("demo-pkg", "1.0", served.as_uri(),
                              sha256 or hashlib.sha256(data).hexdigest())


def sway_config(tmp_path: Path) -> BuildConfig:
    return BuildConfig(out=tmp_path / "out" / "live.img", desktop=Desktop.SWAY, zfs=False,
                       cache_dir=tmp_path / "cache")


def test_a_wheel_is_unpacked_whole_and_says_who_installed_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = sway_config(tmp_path)
    config.work_dir.mkdir(parents=True)
    monkeypatch.setattr(wheels, "DESKTOP_WHEELS", (pin_of(make_wheel(), tmp_path / "pypi"),))
    wheels.stage(config)
    site = wheels.staging_dir(config)
    assert (site / "demo_pkg" / "__init__.py").read_bytes() == b"VALUE = 1\n"
    assert (site / DIST_INFO / "INSTALLER").read_text() == "anklume-image\n"
    assert f"{DIST_INFO}/INSTALLER,{_digest(b'anklume-image' + chr(10).encode())},14" in (
        site / DIST_INFO / "RECORD").read_text()
    assert (site / "demo_pkg" / "__init__.py").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "cache" / "wheels" / "demo_pkg-1.0-py3-none-any.whl").exists()


def test_a_wheel_whose_bytes_differ_from_its_pin_is_refused_and_nothing_is_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = sway_config(tmp_path)
    config.work_dir.mkdir(parents=True)
    wrong = pin_of(make_wheel(), tmp_path / "pypi", sha256="0" * 64)
    monkeypatch.setattr(wheels, "DESKTOP_WHEELS", (wrong,))
    with pytest.raises(BuildError) as refused:
        wheels.stage(config)
    sentence = str(refused.value)
    assert f"not the {'0' * 64} pinned in anklume_image/wheels.py" in sentence
    assert "nothing was installed" in sentence and "\n" not in sentence
    assert list(config.work_dir.iterdir()) == []  # no staging directory, whole or not
    assert not (tmp_path / "cache" / "wheels").exists() or not any(
        (tmp_path / "cache" / "wheels").iterdir())  # and the bad bytes kept nowhere


def test_a_build_with_a_wrong_pin_stops_before_the_rootfs_and_leaves_nothing_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = sway_config(tmp_path)
    out = config.out
    out.parent.mkdir()
    # What an earlier build of the same output left: none of it may stay.
    for stale in (out, out.with_name(out.name + ".sha256")):
        stale.write_text("an earlier build\n")
    out.with_name(out.name + ".bundle").mkdir()
    monkeypatch.setattr(wheels, "DESKTOP_WHEELS",
                        (pin_of(make_wheel(), tmp_path / "pypi", sha256="1" * 64),))

    def no_rootfs(*args: object) -> Path:  # FAKE: a unit test never runs mmdebstrap
        raise AssertionError("the build went on to the rootfs stage")

    monkeypatch.setattr(rootfs, "build_rootfs", no_rootfs)
    with pytest.raises(BuildError, match="nothing was installed and the build stops"):
        build(config)
    assert sorted(p.name for p in out.parent.iterdir()) == [config.work_dir.name]
    assert not wheels.staging_dir(config).exists()
    assert not (config.work_dir / "rootfs.tar").exists()


def test_a_cached_wheel_is_used_only_while_it_matches_its_pin(tmp_path: Path) -> None:
    data = make_wheel()
    pin = pin_of(data, tmp_path / "pypi")
    cache = tmp_path / "cache"
    assert wheels.fetch(pin, cache) == data
    Path(pin.url.removeprefix("file://")).unlink()  # PyPI gone: the cache serves
    assert wheels.fetch(pin, cache) == data
    (cache / pin.filename).write_bytes(b"damaged")
    with pytest.raises(BuildError, match="could not download"):
        wheels.fetch(pin, cache)  # a damaged copy is never used
    assert not (cache / pin.filename).exists()


@pytest.mark.parametrize(("wheel", "why"), [
    (make_wheel(record_lies=True), "does not match the wheel's RECORD"),
    (make_wheel({"../evil.py": b"x"}), "leaves the installation directory"),
    (make_wheel({"demo_pkg-1.0.data/scripts/run": b"#!/bin/sh\n"}), "outside site-packages"),
    (make_wheel(tag="cp313-cp313-linux_x86_64"), "py3-none-any and purelib"),
])
def test_a_wheel_that_is_not_plain_pure_python_is_refused_before_any_file_is_written(
        tmp_path: Path, wheel: bytes, why: str) -> None:
    pin = pin_of(wheel, tmp_path / "pypi")
    site = tmp_path / "site"
    with pytest.raises(BuildError, match=why):
        wheels.unpack(pin, wheels.fetch(pin, tmp_path / "cache"), site)
    assert not site.exists()


def test_the_pin_is_the_version_the_desktop_extra_allows() -> None:
    """pyproject.toml's desktop extra and the image's wheel name one textual-serve."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = {Requirement(r).name: Requirement(r)
             for r in project["optional-dependencies"]["desktop"]}
    pin = wheels.TEXTUAL_SERVE
    assert pin.version in extra[pin.name].specifier
    assert pin.filename == f"textual_serve-{pin.version}-py3-none-any.whl"
    assert pin.url.startswith("https://files.pythonhosted.org/")
    assert len(pin.sha256) == 64 and int(pin.sha256, 16) >= 0


def test_only_debian_images_with_a_desktop_get_the_wheels_and_their_list(
        tmp_path: Path) -> None:
    sway = sway_config(tmp_path)
    hooks = install.wheel_hooks(sway)
    assert str(wheels.staging_dir(sway)) in hooks[0] and "sysconfig" in hooks[0]
    assert "textual-serve 1.1.3 207a472b" in hooks[1] and wheels.LIST_IN_IMAGE in hooks[1]
    assert set(hooks) <= set(install.customize_hooks(sway, ROOT))
    for other in (sway.model_copy(update={"desktop": Desktop.MINIMAL}),
                  sway.model_copy(update={"base": Base.ARCH})):
        assert wheels.wanted(other) == () and install.wheel_hooks(other) == []
