"""``--base arch`` without Arch's mirror: the package list, the pacman
configuration (read by the real pacman-conf), the mirror check against a
server on this machine, the generated build script and hooks, the CLI's
refusals. The pacstrap run itself, against a repository on this machine,
is tests/service/test_image_arch.py; what has never run is docs/arch.md's.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from anklume_image import arch_rootfs, cli, install, packages, pacman
from anklume_image.config import Base, BuildConfig, Desktop
from anklume_image.errors import BuildError

REPO = Path(__file__).resolve().parents[2]


def arch(tmp_path: Path, **options: object) -> BuildConfig:
    return BuildConfig.model_validate({"out": tmp_path / "x.img", "base": Base.ARCH,
                                       "zfs": False, "cache_dir": tmp_path / "cache",
                                       **options})


def test_zfs_is_refused_on_arch_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"only in the AUR.*build with --no-zfs"):
        packages.arch_packages(arch(tmp_path, zfs=True))


def test_the_arch_packages_cover_what_the_debian_image_has(tmp_path: Path) -> None:
    wanted = packages.arch_packages(arch(tmp_path))
    assert not [p for p in wanted if p.startswith("python3-") or p.endswith("-amd64")]
    # Each Python dependency under Arch's name.
    for debian in packages.DEBIAN_BASE:
        if debian.startswith("python3-"):
            name = debian.removeprefix("python3-")
            assert f"python-{name}" in wanted, debian
    assert {"linux", "mkinitcpio", "systemd-ukify", "cryptsetup", "device-mapper",
            "incus", "python"} <= set(wanted)
    sway = packages.arch_packages(arch(tmp_path, desktop=Desktop.SWAY))
    assert {"sway", "greetd", "python-textual", "mako"} <= set(sway)
    everything = set(packages.arch_packages(arch(tmp_path, desktop=Desktop.ALL)))
    assert {"labwc", "plasma-desktop", "kwin"} <= everything


def test_pacman_reads_the_generated_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "pacman.conf"
    server = pacman.server_line("https://mirror.example/archlinux")
    conf.write_text(pacman.pacman_conf(server, "amd64", tmp_path / "pkg", tmp_path / "gnupg"))

    def read(*args: str) -> list[str]:
        proc = subprocess.run(["pacman-conf", "--config", str(conf), *args],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert not proc.stderr, proc.stderr  # an option this pacman does not know
        return proc.stdout.splitlines()

    assert read("--repo-list") == ["core", "extra"]
    assert read("--repo", "extra", "Server") == [
        "https://mirror.example/archlinux/extra/os/x86_64"]
    assert read("Architecture") == ["x86_64"]
    assert read("SigLevel") == ["PackageRequired", "PackageTrustedOnly", "DatabaseOptional",
                                "DatabaseTrustedOnly"]
    assert read("CacheDir") == [f"{tmp_path}/pkg/"]
    assert read("GPGDir") == [f"{tmp_path}/gnupg/"]


@pytest.mark.parametrize(("given", "server"), [
    (None, pacman.DEFAULT_MIRROR),
    ("https://m.example/archlinux/", "https://m.example/archlinux/$repo/os/$arch"),
    ("http://m.example/$repo/os/$arch", "http://m.example/$repo/os/$arch"),
])
def test_a_mirror_is_a_server_line(given: str | None, server: str) -> None:
    assert pacman.server_line(given) == server


@pytest.mark.parametrize("bad", ["ftp://m.example/arch", "https://m.example/a\nServer = x",
                                 "https://m.example/a b", "m.example", "https://'x'"])
def test_a_mirror_that_is_no_url_is_refused(bad: str) -> None:
    with pytest.raises(BuildError, match="is not an Arch mirror URL"):
        pacman.server_line(bad)


@contextlib.contextmanager
def serve(served: Path) -> Iterator[str]:
    """A web server on this machine serving a directory laid out as a
    mirror; yields its Server line."""
    served.mkdir(exist_ok=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/$repo/os/$arch"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with serve(tmp_path / "mirror") as server:
        yield server, tmp_path / "mirror"


def databases(served: Path, *repositories: str) -> None:
    for repository in repositories:
        directory = served / repository / "os" / "x86_64"
        directory.mkdir(parents=True)
        (directory / f"{repository}.db").write_bytes(b"\x1f\x8b")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_the_mirror_check_wants_every_repository(mirror: tuple[str, Path]) -> None:
    server, served = mirror
    databases(served, "core")
    with pytest.raises(BuildError, match=r"has no extra database \(.*HTTP 404\)"):
        pacman.check_mirror(server, "amd64")
    databases(served, "extra")
    pacman.check_mirror(server, "amd64")


def test_an_unreachable_mirror_is_one_sentence() -> None:
    server = f"http://127.0.0.1:{closed_port()}/$repo/os/$arch"
    with pytest.raises(BuildError, match=r"the Arch mirror cannot be reached .*--mirror"):
        pacman.check_mirror(server, "amd64", timeout=5)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_the_cli_refuses_a_suite_and_zfs_on_arch(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.img")
    code, err = run_cli(["build", "--out", out, "--base", "arch", "--no-zfs",
                         "--suite", "trixie"], capsys)
    assert code == 1 and "Arch Linux is rolling: leave --suite out" in err
    code, err = run_cli(["build", "--out", out, "--base", "arch"], capsys)
    assert code == 1 and "ZFS (zfs-dkms, zfs-utils) is not in Arch's repositories" in err
    assert err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_an_unreachable_mirror_stops_the_cli_and_keeps_the_last_image(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # the root check is the next test's
    out = tmp_path / "x.img"
    out.write_text("the last image")
    (tmp_path / "x.img.sha256").write_text("its checksum")
    code, err = run_cli(["build", "--out", str(out), "--base", "arch", "--no-zfs",
                         "--mirror", f"http://127.0.0.1:{closed_port()}/archlinux"], capsys)
    assert code == 1
    assert err.startswith("anklume-image: the Arch mirror cannot be reached (http://127.0.0.1:")
    assert err.count("\n") == 1
    assert out.read_text() == "the last image"
    assert (tmp_path / "x.img.sha256").read_text() == "its checksum"


def test_arch_builds_as_root_only(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="--base arch builds as root"):
        arch_rootfs.preflight(arch(tmp_path), euid=1000)


def test_the_arch_hooks_use_mkinitcpio_and_site_packages(tmp_path: Path) -> None:
    hooks = "\n".join(install.customize_hooks(arch(tmp_path), REPO))
    assert "update-initramfs" not in hooks and "initramfs-tools" not in hooks
    assert "/usr/lib/initcpio/install" in hooks and "/usr/lib/initcpio/hooks" in hooks
    assert f"mkinitcpio --config {install.MKINITCPIO_CONF}" in hooks
    assert "dist-packages" not in hooks and '"$ANKLUME_SITE"/anklumed' in hooks
    assert "/usr/lib/modules/$v/vmlinuz" in hooks
    debian = "\n".join(install.customize_hooks(BuildConfig(out=tmp_path / "x.img"), REPO))
    assert "mkinitcpio" not in debian and "ANKLUME_SITE" not in debian
    assert "update-initramfs -u -k all" in debian and install.DIST_PACKAGES in debian


def test_the_initramfs_configuration_runs_our_hook_under_busybox_init() -> None:
    """bash reads it as mkinitcpio does: the busybox init ("base"), no
    "systemd" (its init runs no runtime hook), no "autodetect" (it would keep
    the build host's modules), our hook last."""
    proc = subprocess.run(["bash", "-c", f"{install.MKINITCPIO_SETTINGS}\n"
                           'printf "%s\\n" "${HOOKS[@]}"'],
                          capture_output=True, text=True, check=True)
    hooks = proc.stdout.split()
    assert hooks[0] == "base" and hooks[-1] == "anklume"
    assert "udev" in hooks and "block" in hooks
    assert "systemd" not in hooks and "autodetect" not in hooks


def test_the_build_script_is_bash_and_installs_every_package(tmp_path: Path) -> None:
    config = arch(tmp_path, desktop=Desktop.SWAY)
    script = arch_rootfs.build_script(config, tmp_path / "work", REPO)
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    pacstrap = next(line for line in script.splitlines() if line.startswith("pacstrap "))
    assert pacstrap.split()[-len(packages.arch_packages(config)):] == \
        packages.arch_packages(config)
    # the tree is packed only after the chroot's mounts are gone
    assert script.index('umount --recursive --lazy "$root/proc"') < script.index("tar --create")


def test_the_hook_commands_do_what_mmdebstraps_do(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "boot" / "efi").mkdir(parents=True)
    (root / "boot" / "efi" / "x.efi").write_text("efi")
    outside.mkdir()
    (outside / "pkg").mkdir()
    (outside / "pkg" / "mod.py").write_text("code")
    (outside / "key.pem").write_text("key")
    hooks = [f"copy-in {outside / 'pkg'} {outside / 'key.pem'} /usr/lib",
             f"upload {outside / 'key.pem'} /etc/trusted.pem",
             f"sync-out /boot {tmp_path / 'boot-files'}"]
    script = "\n".join(["set -euo pipefail", f"root={root}", arch_rootfs._HOOK_COMMANDS,
                        'set -- "$root"', *hooks])
    subprocess.run(["bash", "-c", script], check=True)
    assert (root / "usr" / "lib" / "pkg" / "mod.py").read_text() == "code"
    assert (root / "usr" / "lib" / "key.pem").read_text() == "key"
    assert (root / "etc" / "trusted.pem").read_text() == "key"
    assert (tmp_path / "boot-files" / "efi" / "x.efi").read_text() == "efi"


@pytest.mark.parametrize(("output", "sentence"), [
    ("error: target not found: python-dbus-fast\n", "Arch's repositories have no package "
                                                    "python-dbus-fast"),
    ("error: target not found: a\nerror: target not found: b\n", "hold none of the image's 2"),
    ("error: python-rich: signature from \"X <x@archlinux.org>\" is unknown trust\n",
     "a newer archlinux-keyring is needed"),
    ('error: key "ABCD" is unknown\n', "a newer archlinux-keyring is needed"),
    ("error: failed retrieving file 'core.db' from m.example : Could not resolve host\n",
     "could not download every file it needs"),
    ("error: a: missing required signature\nerror: failed to commit transaction (invalid or "
     "corrupted package (PGP signature))\n", "refused 1 package(s) without a valid signature"),
    ("error: failed to commit transaction (invalid or corrupted package (checksum))\n",
     "a damaged or altered package"),
    ("==> ERROR: Failed to install packages to new root\n", "Failed to install packages"),
])
def test_pacstrap_failures_become_sentences(output: str, sentence: str) -> None:
    assert sentence in arch_rootfs.failure_sentence(output, "S", ["a", "b"])


def test_greetds_user_is_arch_s_greeter(tmp_path: Path) -> None:
    """The shared desktop/greetd/config.toml, as the Arch hook leaves it."""
    etc = tmp_path / "root" / "etc" / "greetd"
    etc.mkdir(parents=True)
    shutil.copy2(REPO / "desktop" / "greetd" / "config.toml", etc)
    hooks = install.desktop_hooks(arch(tmp_path, desktop=Desktop.SWAY), REPO)
    [edit] = [h for h in hooks if h.startswith("sed ")]
    subprocess.run(["bash", "-c", edit, "_", str(tmp_path / "root")], check=True)
    edited = (etc / "config.toml").read_text()
    assert 'user = "greeter"' in edited and "_greetd" not in edited
    assert 'user = "anklume"' in edited  # the live user's session is untouched
    debian = install.desktop_hooks(BuildConfig(out=tmp_path / "x", desktop=Desktop.SWAY), REPO)
    assert not [h for h in debian if "greeter" in h]


def test_docs_arch_lists_every_arch_package() -> None:
    """docs/arch.md's table names each package the Arch image installs, and
    says plainly that no Arch image has been built."""
    page = (REPO / "docs" / "arch.md").read_text()
    table = "\n".join(line for line in page[page.index("| role |"):].splitlines()
                      if line.startswith("|"))
    everything = {*packages.ARCH_BASE, *packages.ARCH_GRAPHICAL,
                  *(p for names in packages.ARCH_DESKTOPS.values() for p in names)}
    assert [p for p in sorted(everything) if f"`{p}`" not in table] == []
    assert page.startswith("# `anklume-image build --base arch`") and "**Never built.**" in page


def test_zsh_finds_the_completion_on_arch(tmp_path: Path) -> None:
    hooks = install.cli_docs_hooks(tmp_path, Base.ARCH)
    assert f"copy-in {tmp_path}/usr/share/zsh/vendor-completions/_anklumectl " \
           "/usr/share/zsh/site-functions" in hooks
    assert not [h for h in hooks if h.endswith("/usr/share/zsh/vendor-completions")]
