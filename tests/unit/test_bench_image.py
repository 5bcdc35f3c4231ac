"""bench.image's account of why two builds' squashfs differ (issue 14:
"whether two builds give the same squashfs sha256 (report it either way)")."""

import os
import subprocess
from pathlib import Path

from bench.image import squashfs_differences


def squashfs(tree: Path, out: Path, *options: str) -> Path:
    subprocess.run(["mksquashfs", tree, out, "-quiet", "-no-progress", "-noappend",
                    *options], check=True)
    return out


def tree(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    (root / "lib/modules").mkdir(parents=True)
    (root / "lib/modules/zfs.ko").write_bytes(b"module" * 100)
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("anklume\n")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (1_767_225_600, 1_767_225_600), follow_symlinks=False)
    return root


def test_a_changed_module_and_a_directory_mtime_are_named(tmp_path: Path) -> None:
    a, b = tree(tmp_path, "a"), tree(tmp_path, "b")
    (b / "lib/modules/zfs.ko").write_bytes(b"signed" * 100)
    os.utime(b / "lib/modules/zfs.ko", (1_767_225_600, 1_767_225_600))
    os.utime(b / "etc", (1_767_225_601, 1_767_225_601))
    found = squashfs_differences(squashfs(a, tmp_path / "a.sqfs"),
                                 squashfs(b, tmp_path / "b.sqfs"))
    assert found == ["etc: mtime 1767225600000000000 / 1767225601000000000",
                     "lib/modules/zfs.ko: content"]


def test_a_file_only_in_one_is_named(tmp_path: Path) -> None:
    a, b = tree(tmp_path, "a"), tree(tmp_path, "b")
    (b / "etc/leftover").write_text("x")
    os.utime(b / "etc/leftover", (1_767_225_600, 1_767_225_600))
    os.utime(b / "etc", (1_767_225_600, 1_767_225_600))
    found = squashfs_differences(squashfs(a, tmp_path / "a.sqfs"),
                                 squashfs(b, tmp_path / "b.sqfs"))
    assert found == ["etc/leftover: only in the second"]


def test_the_same_tree_packed_differently_shows_the_superblocks(tmp_path: Path) -> None:
    a = tree(tmp_path, "a")
    one = squashfs(a, tmp_path / "one.sqfs", "-comp", "gzip")
    two = squashfs(a, tmp_path / "two.sqfs", "-comp", "xz")
    [found] = squashfs_differences(one, two)
    assert found.startswith("every file is the same; superblocks:")
    assert "gzip" in found and "xz" in found
