"""Benchmarks of the image build (prints figures; not a test). Runs
mmdebstrap and fills the disk: take the lock.

  flock /tmp/anklume-heavy.lock .venv/bin/python -m bench.image [--desktop minimal sway] [--zfs]
      [--secure-boot] [--once | --no-fresh] [--keep DIR]

With --once, one build per desktop on the shared package cache (the builder's
default, keyed by its inputs): what a desktop adds to the image and how long
one build takes, without the half hour of three builds of a large desktop. With --keep, the
images (and their bundles) are left in DIR to be looked into, not deleted.
With --secure-boot, every build is given the same Secure Boot key and
certificate (made for the run): a --zfs build signs its modules with it.
With --no-fresh, only the two builds on the shared package cache whose
squashfs are compared; when they differ, both are unpacked and what differs
is listed file by file (kept in DIR as DESKTOP-1/-2.squashfs with --keep).
Each --once build is also given to its compositors (sway, labwc), run in its
unpacked root: whether each accepts the image's configuration
(devtools/compositor_check.py; the image tier checks sway's in its sway image).

For each desktop, three builds with the same packages and SOURCE_DATE_EPOCH,
each with a signing key as a release would have:
1. fresh: an empty package cache (every package downloaded from the mirror);
2. cached: the cache the first build filled;
3. cached again, to see whether the squashfs is the same to the byte
   (issue 14: "report it either way").
Figures: each stage's time (the builder's own ``stage X done`` lines), the
share of the package download and installation (``rootfs``, mmdebstrap) in
the whole build -- the reference in the same run, as the rest is ours --,
the squashfs and stick sizes beside the seed's "10-15 minutes" and "~1.2 GB",
and the squashfs sha256 of the two cached builds.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from anklume_image.build import build
from anklume_image.config import BuildConfig, Desktop
from anklumed.slots import bundle
from bench.machine import load
from devtools import compositor_check

SOURCE_DATE_EPOCH = 1_767_225_600  # 2026-01-01
STAGE_DONE = re.compile(r"stage (\S+) done in ([0-9.]+) s")


class Stages(logging.Handler):
    """The builder's log lines ``stage NAME done in S s``, by name."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if found := STAGE_DONE.search(record.getMessage()):
            self.seconds[found[1]] = float(found[2])


@dataclass(frozen=True)
class Result:
    total: float
    stages: dict[str, float]
    squashfs_sha256: str
    squashfs_bytes: int
    stick_bytes: int  # allocated: the image is sparse, as written to a stick
    squashfs: Path  # hard-linked aside when two builds are compared (build_kept)
    verdicts: dict[str, str] = field(default_factory=dict)  # compositor -> its verdict


def build_once(config: BuildConfig) -> Result:
    stages = Stages()
    logger = logging.getLogger("anklume_image")
    logger.setLevel(logging.INFO)
    logger.addHandler(stages)
    start = time.monotonic()
    try:
        image = build(config)
    finally:
        logger.removeHandler(stages)
    total = time.monotonic() - start
    squashfs = next((image.parent / (image.name + ".bundle")).glob("*.squashfs"))
    digest = hashlib.sha256()
    with squashfs.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return Result(total, dict(stages.seconds), digest.hexdigest(), squashfs.stat().st_size,
                  image.stat().st_blocks * 512, squashfs)


def build_kept(config: BuildConfig, n: int) -> Result:
    """One of the compared builds, its squashfs hard-linked aside: the next
    build writes the same out path (as a rerun would), and a pair that
    differs is looked into file by file."""
    result = build_once(config)
    kept = config.out.with_name(f"{config.out.stem}-{n}.squashfs")
    kept.unlink(missing_ok=True)
    kept.hardlink_to(result.squashfs)
    return replace(result, squashfs=kept)


# What makes a path differ (FIELDS names them): mode, uid, gid, size, mtime,
# xattrs, a symlink's target.
Meta = tuple[int, int, int, int, int, dict[str, bytes], str | None]


def unpack(squashfs: Path, root: Path) -> dict[str, Meta]:
    """Each path of the squashfs, unpacked under root, by what makes it differ:
    type and mode, owner, size, mtime, xattrs and a symlink's target."""
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(root), str(squashfs)],
                   check=True, capture_output=True)
    found: dict[str, Meta] = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        xattrs = {name: os.getxattr(path, name, follow_symlinks=False)
                  for name in sorted(os.listxattr(path, follow_symlinks=False))}
        target = os.readlink(path) if path.is_symlink() else None
        found[str(path.relative_to(root))] = (
            st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, xattrs, target)
    return found


def squashfs_differences(a: Path, b: Path, limit: int = 20) -> list[str]:
    """Why two squashfs differ, file by file: the paths whose metadata or
    content differ (at most limit), or, when every file is the same, the two
    superblocks (the difference is then in the packing, not the tree)."""
    with tempfile.TemporaryDirectory(prefix="anklume-squashfs-diff-", dir="/var/tmp") as tmp:
        root_a, root_b = Path(tmp, "a"), Path(tmp, "b")
        tree_a, tree_b = unpack(a, root_a), unpack(b, root_b)
        found = [f"{p}: only in {'the first' if p in tree_a else 'the second'}"
                 for p in sorted(tree_a.keys() ^ tree_b.keys())]
        for path in sorted(tree_a.keys() & tree_b.keys()):
            found += [f"{path}: {what}" for what in differs(
                tree_a[path], tree_b[path], root_a / path, root_b / path)]
            if len(found) > limit:
                return [*found[:limit], "..."]
    if found:
        return found
    return [f"every file is the same; superblocks: {superblock(a)} / {superblock(b)}"]


FIELDS = ("mode", "uid", "gid", "size", "mtime", "xattrs", "symlink target")


def differs(meta_a: Meta, meta_b: Meta, path_a: Path, path_b: Path) -> list[str]:
    found = [f"{name} {x!r} / {y!r}"
             for name, x, y in zip(FIELDS, meta_a, meta_b, strict=True) if x != y]
    if (not found and stat.S_ISREG(meta_a[0])
            and not filecmp.cmp(path_a, path_b, shallow=False)):
        found.append("content")
    return found


def superblock(squashfs: Path) -> str:
    """unsquashfs's account of the superblock, minus the file name."""
    shown = subprocess.run(["unsquashfs", "-s", str(squashfs)], check=True,
                           capture_output=True, text=True).stdout
    return "; ".join(line.strip() for line in shown.splitlines()[1:] if line.strip())


CHECKS = {Desktop.SWAY: compositor_check.sway_errors,
          Desktop.LABWC: compositor_check.labwc_errors}


def verdicts(config: BuildConfig) -> dict[str, str]:
    """Each compositor of the image on its configuration, in the slot's tree."""
    checks = {d: CHECKS[d] for d in config.sessions if d in CHECKS}
    if not checks:
        return {}
    squashfs = next(config.out.with_name(config.out.name + ".bundle").glob("*.squashfs"))
    root = config.work_dir.with_name(config.out.name + ".root")
    shutil.rmtree(root, ignore_errors=True)
    found = {}
    try:
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(root), str(squashfs)],
                       check=True, capture_output=True)
        for desktop, check in checks.items():
            try:
                errors = check(root)
            except compositor_check.CompositorFailed as e:
                errors = [str(e)]
            found[desktop.value] = "; ".join(errors) or "accepted"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return found


def secure_boot_keys(work: Path) -> dict[str, Path]:
    """A Secure Boot db key and certificate for every build of the run: with
    ZFS the build signs the modules with it, so the squashfs depends on it."""
    key, cert = work / "db.key", work / "db.crt"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "30", "-subj", "/CN=anklume bench db/", "-keyout", key,
                    "-out", cert], check=True, capture_output=True)
    return {"secure_boot_key": key, "secure_boot_cert": cert}


def bench_desktop(work: Path, desktop: str, zfs: bool, once: bool,
                  secure_boot: dict[str, Path], fresh: bool = True) -> list[Result]:
    key = work / f"signing-{desktop}.pem"
    bundle.generate_key(key)
    options = {
        "out": work / f"{desktop}.img", "desktop": desktop, "zfs": zfs, "signing_key": key,
        "source_date_epoch": SOURCE_DATE_EPOCH, "version": "1.0.0", **secure_boot}
    if once:
        config = BuildConfig.model_validate(options)
        result = build_once(config)
        return [replace(result, verdicts=verdicts(config))]
    if not fresh:  # the shared package cache: the two builds compared, not the download
        return [build_kept(BuildConfig.model_validate(options), n) for n in (1, 2)]
    # an empty cache of its own: the first build downloads every package
    options["cache_dir"] = work / f"cache-{desktop}"
    return [build_once(BuildConfig.model_validate(options)) for _ in range(3)]


def report_once(desktop: str, result: Result) -> None:
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.stages.items())
    print(f"\n{desktop}: one build on the shared package cache, {result.total:.0f} s "
          f"({stages})")
    print(f"  squashfs {result.squashfs_bytes / 1e6:.0f} MB, stick image allocated "
          f"{result.stick_bytes / 1e6:.0f} MB; squashfs sha256 {result.squashfs_sha256[:16]}")
    for compositor, verdict in result.verdicts.items():
        print(f"  {compositor}'s configuration: {verdict}")


def report(desktop: str, results: list[Result]) -> None:
    if len(results) == 1:
        report_once(desktop, results[0])
        return
    if len(results) == 2:
        report_pair(desktop, *results)
        return
    fresh, cached, again = results
    print(f"\n{desktop}:")
    for name, result in (("fresh", fresh), ("cached", cached), ("cached again", again)):
        rootfs = result.stages.get("rootfs", 0.0)
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in result.stages.items())
        print(f"  {name:13} {result.total:6.0f} s  (rootfs, mmdebstrap: {rootfs:.0f} s = "
              f"{rootfs / result.total:.0%} of the build; {stages})")
    print(f"  the seed's figure: 10-15 minutes; fresh here {fresh.total / 60:.1f} min, "
          f"cached {cached.total / 60:.1f} min; cached/fresh {cached.total / fresh.total:.2f}")
    print(f"  squashfs {cached.squashfs_bytes / 1e6:.0f} MB, stick image allocated "
          f"{cached.stick_bytes / 1e6:.0f} MB (the seed: ~1.2 GB)")
    same = cached.squashfs_sha256 == again.squashfs_sha256
    print(f"  reproducible: {'yes' if same else 'NO'} -- squashfs sha256 "
          f"{cached.squashfs_sha256[:16]} / {again.squashfs_sha256[:16]}"
          f" (fresh: {fresh.squashfs_sha256[:16]})")


def report_pair(desktop: str, cached: Result, again: Result) -> None:
    print(f"\n{desktop}: two builds on the shared package cache, "
          f"{cached.total:.0f} s and {again.total:.0f} s")
    same = cached.squashfs_sha256 == again.squashfs_sha256
    print(f"  reproducible: {'yes' if same else 'NO'} -- squashfs sha256 "
          f"{cached.squashfs_sha256[:16]} / {again.squashfs_sha256[:16]}, "
          f"{cached.squashfs_bytes} / {again.squashfs_bytes} bytes")
    if not same:
        print("  what differs:")
        for line in squashfs_differences(cached.squashfs, again.squashfs):
            print(f"    {line}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.image")
    parser.add_argument("--desktop", nargs="+", default=["minimal", "sway"])
    parser.add_argument("--zfs", action="store_true",
                        help="with zfs-dkms (built in the chroot: adds minutes)")
    parser.add_argument("--once", action="store_true",
                        help="one build per desktop on the shared package cache")
    parser.add_argument("--secure-boot", action="store_true",
                        help="give every build one Secure Boot key and certificate "
                        "(with --zfs, the modules are signed with it)")
    parser.add_argument("--no-fresh", action="store_true",
                        help="two builds on the shared package cache, no fresh one")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build into DIR and leave the images there")
    args = parser.parse_args()
    before = load()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="anklume-bench-image-", dir="/var/tmp"))
    try:
        secure_boot = secure_boot_keys(work) if args.secure_boot else {}
        results = {desktop: bench_desktop(work, desktop, args.zfs, args.once, secure_boot,
                                          fresh=not args.no_fresh)
                   for desktop in args.desktop}
        print(f"{before} -> {load()}; zfs {'on' if args.zfs else 'off'}; "
              f"secure boot key {'given' if args.secure_boot else 'none'}; "
              f"SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}")
        for desktop, desktop_results in results.items():  # before the images go
            report(desktop, desktop_results)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
