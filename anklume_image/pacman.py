"""pacman's side of ``--base arch``: the mirror, the configuration pacstrap
installs with, and the keyring that verifies the packages.

The configuration is written for the build host's pacman (Debian 12's
pacman-package-manager is 6.0: no option of pacman 7 such as DownloadUser),
with every path of its own under the build's work and cache directories, so
nothing of the host's /etc/pacman.* is read. Packages and databases must be
signed by a key of the host's archlinux-keyring (``SigLevel = Required``).
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

from anklume_image.errors import BuildError

# Arch's own GeoIP mirror; a mirror is given as a pacman Server line or as
# its base (``https://host/archlinux``), to which $repo/os/$arch is added.
DEFAULT_MIRROR = "https://geo.mirror.pkgbuild.com/$repo/os/$arch"
REPOSITORIES = ("core", "extra")
PACMAN_ARCH = {"amd64": "x86_64"}
# The keyring Debian's archlinux-keyring installs, which pacman-key --populate reads.
ARCH_KEYRING = Path("/usr/share/keyrings/archlinux.gpg")
MIRROR_TIMEOUT = 20.0
_MIRROR = re.compile(r"^(https?|file)://[^\s'\"\\]+$")


def server_line(mirror: str | None) -> str:
    """The Server value pacman expands per repository: given, or the default."""
    value = (mirror or DEFAULT_MIRROR).rstrip("/")
    if not _MIRROR.match(value):
        raise BuildError(f"--mirror {value!r} is not an Arch mirror URL "
                         "(http://, https:// or file://, e.g. https://host/archlinux)")
    if "$repo" not in value:
        value += "/$repo/os/$arch"
    return value


def repository_url(server: str, repository: str, arch: str) -> str:
    return server.replace("$repo", repository).replace("$arch", PACMAN_ARCH[arch])


def pacman_conf(server: str, arch: str, cache: Path, gpg_dir: Path) -> str:
    """pacman.conf for the build: only the official repositories, verified.
    No DBPath: with pacstrap's ``pacman -r ROOT`` the package database is
    the image's own /var/lib/pacman (``pacman -Q`` on the image lists it)."""
    lines = [
        "# Written by anklume-image for one build (anklume_image/pacman.py).",
        "[options]",
        f"Architecture = {PACMAN_ARCH[arch]}",
        f"CacheDir = {cache}/",
        f"GPGDir = {gpg_dir}/",
        "HoldPkg = pacman glibc",
        "SigLevel = Required DatabaseOptional",
        "LocalFileSigLevel = Never",  # no local package is ever installed (pacman -U)
        "ParallelDownloads = 4",
        # The image's documentation stays (man pages, the guide's help):
        # no NoExtract, so the tree is what a pacman -S would give.
    ]
    for repository in REPOSITORIES:
        lines += ["", f"[{repository}]", f"Server = {server}"]
    return "\n".join(lines) + "\n"


def check_mirror(server: str, arch: str, timeout: float = MIRROR_TIMEOUT) -> None:
    """Each repository's database must be there before pacstrap starts: an
    unreachable mirror is said in one sentence, not after pacman's retries."""
    for repository in REPOSITORIES:
        url = f"{repository_url(server, repository, arch)}/{repository}.db"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
                response.read(1)
        except urllib.error.HTTPError as e:
            raise BuildError(f"the Arch mirror has no {repository} database ({url}: HTTP "
                             f"{e.code}): give a mirror that serves $repo/os/$arch with "
                             "--mirror") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BuildError(f"the Arch mirror cannot be reached ({url}: {reason}): "
                             "--base arch downloads its packages from an Arch mirror; "
                             "give a reachable one with --mirror") from None
