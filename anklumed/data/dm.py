"""The opened data disk's device-mapper node, when its disk is pulled out.

A USB disk pulled while in use leaves /dev/mapper/anklume-data-<pool> in
place with nothing under it. Three things can then be done with it:

- hold it (``dmsetup suspend --nolockfs``): new I/O waits instead of failing,
  so the filesystem above has not seen an error yet and nothing is lost;
- carry on when the disk comes back: the LUKS header is opened again under a
  spare name, and that mapping's table (the volume key included) is moved onto
  the held node, which then resumes where it stopped. ZFS needs `zpool clear`
  afterwards; it is also the only way back for ZFS, which cannot export a
  pool whose disk is gone (openzfs/zfs#11082);
- give up (``dmsetup wipe_table``): waiting I/O fails, so the filesystem can
  be unmounted lazily and the node removed when the last user lets go.

The volume key travels from one dmsetup to the other through this process's
memory (stdout to stdin), never argv, a file or a log.
"""

from __future__ import annotations

from pathlib import Path

from anklumed.command import run

SYS_BLOCK = Path("/sys/block")


def _sysfs(name: str) -> Path | None:
    """/sys/block/dm-N of the mapping called ``name``, or None if there is none.
    (Its /dev/mapper node is no proof: without udev, a removed mapping's node
    can stay behind.)"""
    for dm_name in SYS_BLOCK.glob("dm-*/dm/name"):
        try:
            if dm_name.read_text().strip() == name:
                return dm_name.parent.parent
        except OSError:
            continue
    return None


def exists(name: str) -> bool:
    return _sysfs(name) is not None


def _slaves(name: str) -> list[Path] | None:
    sysfs = _sysfs(name)
    if sysfs is None:
        return None
    try:
        return list((sysfs / "slaves").iterdir())  # (empty for a wiped table)
    except OSError:
        return None  # the mapping was removed meanwhile


def backing_gone(name: str) -> bool:
    """True when the mapping exists but the disk under it was removed.

    The kernel keeps the ``slaves/`` link of a removed disk for as long as the
    mapping holds it, but the link no longer resolves."""
    slaves = _slaves(name)
    return bool(slaves) and not any(link.exists() for link in slaves or [])


def given_up(name: str) -> bool:
    """True when the mapping exists with nothing under it: its table was
    wiped (give_up) and it waits for its last user to go."""
    return _slaves(name) == []


def is_held(name: str) -> bool:
    """True when the mapping is suspended: its I/O waits."""
    sysfs = _sysfs(name)
    try:
        return sysfs is not None and (sysfs / "dm" / "suspended").read_text().strip() == "1"
    except OSError:
        return False


def hold(name: str) -> None:
    # --nolockfs: freezing the filesystem would write to the missing disk.
    run(["dmsetup", "suspend", "--nolockfs", name], timeout=30)


def move_table(source: str, target: str) -> None:
    """Give ``target`` the table of ``source`` (same key, the disk that came
    back), resume it, and remove ``source``."""
    table = run(["dmsetup", "table", "--showkeys", source]).stdout
    run(["dmsetup", "reload", target], input=table, timeout=30)
    run(["dmsetup", "remove", source], timeout=30)
    run(["dmsetup", "resume", target], timeout=30)


def give_up(name: str) -> None:
    """Fail the held I/O: the filesystem above stops waiting and can be let go."""
    run(["dmsetup", "wipe_table", name], timeout=30)


def remove_deferred(name: str) -> None:
    """Remove the node now, or as soon as its last user closes it."""
    run(["dmsetup", "remove", "--deferred", name], timeout=30)
