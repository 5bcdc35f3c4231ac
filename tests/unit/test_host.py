"""Host facts from kernel interfaces: mountinfo parsing, memory encryption."""

from pathlib import Path

from anklumed.host import MemoryEncryption, backing_of, memory_encryption, parse_mountinfo

MOUNTINFO = """\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/run/ro:/run/ro2,upperdir=/run/rw/u
23 22 0:5 / /run rw - tmpfs tmpfs rw
24 23 7:0 / /run/ro ro - squashfs /dev/loop0 ro
25 23 0:30 / /run/ro2 ro - tmpfs tmpfs ro
26 22 0:40 / /mnt/with\\040space rw - ext4 /dev/sda1 rw
"""


def test_parse_mountinfo_unescapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO + "garbage line\n")
    assert [m.mountpoint for m in mounts][-1] == "/mnt/with space"
    assert mounts[0].fstype == "overlay"


def test_overlay_on_unknown_device_is_unknown(tmp_path: Path) -> None:
    # Lower dir on a device sysfs does not know: "unknown", not a guess.
    b = backing_of("/", parse_mountinfo(MOUNTINFO), sysfs=tmp_path)
    assert b.in_ram is None


def test_memory_encryption_states() -> None:
    sme = "flags\t: fpu sme sev\n"
    assert memory_encryption(None, "", None) is MemoryEncryption.UNKNOWN
    assert memory_encryption("flags\t: fpu sse\n", "", None) is MemoryEncryption.UNSUPPORTED
    assert memory_encryption(sme, "mem_encrypt=on", None) is MemoryEncryption.ACTIVE
    assert memory_encryption(sme, "mem_encrypt=off", None) is MemoryEncryption.AVAILABLE
    assert memory_encryption(sme, "", None) is MemoryEncryption.UNKNOWN
    cfg = "CONFIG_AMD_MEM_ENCRYPT_ACTIVE_BY_DEFAULT=y\n"
    assert memory_encryption(sme, "", cfg) is MemoryEncryption.ACTIVE
    assert memory_encryption("flags : tme\n", "", cfg) is MemoryEncryption.UNKNOWN
