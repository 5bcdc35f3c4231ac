"""How the initramfs finds the stick (``anklume-boot.sh``: find_persist,
pick_persist), against a FAKE sysfs tree (the kernel's layout: a partition's
directory inside its disk's, class/block links to both) and a FAKE blkid
(what util-linux's ``blkid -p -o export -s PART_ENTRY_UUID`` prints), under
busybox sh and dash as the boot runs it.

Looking costs no process (sysfs, read by the shell), and the PARTUUIDs that
decide come from one blkid for every partition read: each process costs
about a tenth of a second in a TCG guest. The wait looks every tenth of a
second, not every second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.test_boot_redirect import INITRAMFS, SHELLS, run_harness

ESP_B = "c0ffee00-1111-4222-8333-444455556666"
PERSIST_A = "aaaaaaaa-0000-4000-8000-000000000001"
PERSIST_B = "bbbbbbbb-0000-4000-8000-000000000002"


@dataclass(frozen=True)
class Part:
    name: str       # sdb4
    label: str      # its GPT name
    uuid: str       # its PARTUUID, as blkid prints it


def stick(disk: str, esp: str, persist: str, sep: str = "") -> list[Part]:
    """An anklume stick's four partitions."""
    return [Part(f"{disk}{sep}1", "ANKLUME-EFI", esp),
            Part(f"{disk}{sep}2", "ANKLUME-OS-A", f"{esp[:-1]}2"),
            Part(f"{disk}{sep}3", "ANKLUME-OS-B", f"{esp[:-1]}3"),
            Part(f"{disk}{sep}4", "ANKLUME-PERSIST", persist)]


TWO_STICKS = {
    "sda": stick("sda", "aaaaaaaa-1111-4222-8333-444455556666", PERSIST_A),
    "sdb": stick("sdb", ESP_B.upper(), PERSIST_B.upper()),  # blkid's case is not relied on
    "nvme0n1": [Part("nvme0n1p1", "data", "dddddddd-0000-4000-8000-000000000009")],
    "loop0": [],
}


def fake_sysfs(root: Path, disks: dict[str, list[Part]]) -> Path:
    """FAKE: block/DISK/PART/{partition,uevent} and class/block links."""
    classes = root / "class" / "block"
    classes.mkdir(parents=True)
    for disk, parts in disks.items():
        (root / "block" / disk).mkdir(parents=True)
        (classes / disk).symlink_to(f"../../block/{disk}")
        for n, part in enumerate(parts, 1):
            d = root / "block" / disk / part.name
            d.mkdir()
            (d / "partition").write_text(f"{n}\n")
            (d / "uevent").write_text(f"MAJOR=8\nDEVNAME={part.name}\nDEVTYPE=partition\n"
                                      f"PARTN={n}\nPARTNAME={part.label}\n")
            (classes / part.name).symlink_to(f"../../block/{disk}/{part.name}")
    return root


def uuid_table(path: Path, *trees: dict[str, list[Part]]) -> Path:
    path.write_text("".join(f"{p.name} {p.uuid}\n" for disks in trees
                            for parts in disks.values() for p in parts))
    return path


# The FAKE blkid logs each call's devices; the FAKE sleep logs its argument
# and, at its LATER_AT-th call, plugs the stick in (SYSFS becomes LATER).
FAKES = """
say() { echo "anklume: $*"; }
modprobe() { :; }
blkid() {
    echo "BLKID $*" >> "$LOG"
    for dev; do
        case "$dev" in /dev/*) ;; *) continue ;; esac
        while read -r part uuid; do
            [ "/dev/$part" = "$dev" ] || continue
            printf 'DEVNAME=%s\\nPART_ENTRY_UUID=%s\\n\\n' "$dev" "$uuid"
        done < "$UUID_TABLE"
    done
    return 0
}
SLEEPS=0
sleep() {
    echo "SLEEP $1" >> "$LOG"
    [ -z "$WHOLE_SECONDS" ] || case "$1" in *.*) return 1 ;; esac
    SLEEPS=$((SLEEPS + 1))
    [ "$SLEEPS" -eq "$LATER_AT" ] && [ -n "$LATER" ] && SYSFS=$LATER
    return 0
}
"""


def find(shell: str, tmp_path: Path, now: dict[str, list[Part]], *, cmdline: str = "",
         esp: str = "", later: dict[str, list[Part]] | None = None, wait: int = 30,
         whole_seconds: bool = False, later_at: int = 3) -> tuple[dict[str, str], list[str]]:
    """find_persist on those disks; PERSIST_DEV and PERSIST_UUID, and the log."""
    sysfs = fake_sysfs(tmp_path / "sys-now", now)
    later_sysfs = fake_sysfs(tmp_path / "sys-later", later) if later else ""
    log = tmp_path / "log"
    driver = f"""{FAKES}
SYSFS={sysfs}
LATER={later_sysfs}
LATER_AT={later_at}
LOG={log}
UUID_TABLE={uuid_table(tmp_path / "uuids", now, later or {})}
WHOLE_SECONDS={"1" if whole_seconds else ""}
read_cmdline
ESP_UUID={esp}
WAIT={wait}
find_persist || echo NO_PERSIST
echo "PERSIST_DEV=$PERSIST_DEV PERSIST_UUID=$PERSIST_UUID"
"""
    script = (INITRAMFS / "anklume-boot.sh").read_text().removesuffix('main "$@"\n')
    harness = tmp_path / "find-harness.sh"
    harness.write_text(script + driver)
    (tmp_path / "cmdline").write_text(f"boot=anklume {cmdline}\n")
    env = {"ANKLUME_LIB": str(INITRAMFS), "ANKLUME_CMDLINE": str(tmp_path / "cmdline"),
           "ANKLUME_RUN": str(tmp_path / "run")}
    result = run_harness(shell, harness, env)
    out: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line.startswith("anklume: "):
            out["said"] = out.get("said", "") + line + "\n"
        if line == "NO_PERSIST":
            out["no_persist"] = "1"
        elif line.startswith("PERSIST_DEV="):
            out.update(word.split("=", 1) for word in line.split())  # type: ignore[misc]
    return out, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("shell", SHELLS)
def test_the_stick_of_the_esp_is_found_with_one_blkid(tmp_path: Path, shell: str) -> None:
    out, log = find(shell, tmp_path, TWO_STICKS, esp=ESP_B)
    assert (out["PERSIST_DEV"], out["PERSIST_UUID"]) == ("sdb4", PERSIST_B), out
    # one process, for both sticks' partitions; never the data disk's
    assert [line for line in log if line.startswith("BLKID")] == [
        "BLKID -p -o export -s PART_ENTRY_UUID /dev/sda1 /dev/sda2 /dev/sda3 /dev/sdb1 "
        "/dev/sdb2 /dev/sdb3 /dev/sda4 /dev/sdb4"], log


@pytest.mark.parametrize("shell", SHELLS)
def test_an_esp_on_no_stick_finds_none_then_gives_up(tmp_path: Path, shell: str) -> None:
    out, log = find(shell, tmp_path, TWO_STICKS, esp="01234567-89ab-4cde-8f01-23456789abcd",
                    wait=2)
    assert out.get("no_persist") == "1", out
    # never another stick's PERSIST: it waited its 2 s, a tenth of a second a look
    assert [line for line in log if line.startswith("SLEEP")] == ["SLEEP 0.1"] * 20, log


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("written", [PERSIST_A, PERSIST_A.upper()])
def test_the_command_lines_partuuid_is_found_in_any_case(tmp_path: Path, shell: str,
                                                         written: str) -> None:
    out, _ = find(shell, tmp_path, TWO_STICKS, cmdline=f"anklume.persist=PARTUUID={written}")
    assert (out["PERSIST_DEV"], out["PERSIST_UUID"]) == ("sda4", PERSIST_A), out


@pytest.mark.parametrize("shell", SHELLS)
def test_without_a_word_the_lowest_partuuid_wins(tmp_path: Path, shell: str) -> None:
    later = {"sdc": stick("sdc", ESP_B, "00000000-0000-4000-8000-000000000000")}
    out, _ = find(shell, tmp_path, {**TWO_STICKS, **later})
    assert (out["PERSIST_DEV"], out["PERSIST_UUID"]) == (
        "sdc4", "00000000-0000-4000-8000-000000000000"), out


@pytest.mark.parametrize("shell", SHELLS)
def test_a_stick_that_appears_late_is_found_at_the_next_tenth(tmp_path: Path,
                                                              shell: str) -> None:
    # The stick's partitions appear between the third and fourth looks.
    later = {"sdb": stick("sdb", ESP_B, PERSIST_B)}
    out, log = find(shell, tmp_path, {"nvme0n1": []}, later=later, esp=ESP_B)
    assert (out["PERSIST_DEV"], out["PERSIST_UUID"]) == ("sdb4", PERSIST_B), out
    assert [line for line in log if line.startswith("SLEEP")] == ["SLEEP 0.1"] * 3, log


@pytest.mark.parametrize("shell", SHELLS)
def test_a_sleep_of_whole_seconds_still_waits_the_whole_wait(tmp_path: Path,
                                                             shell: str) -> None:
    out, log = find(shell, tmp_path, {}, esp=ESP_B, wait=3, whole_seconds=True)
    assert out.get("no_persist") == "1", out
    assert [line for line in log if line.startswith("SLEEP")] == [
        "SLEEP 0.1", "SLEEP 1", "SLEEP 1", "SLEEP 1"], log


@pytest.mark.parametrize("shell", SHELLS)
def test_the_partitions_of_an_nvme_disk_are_its_own(tmp_path: Path, shell: str) -> None:
    disks = {"nvme0n1": stick("nvme0n1", ESP_B, PERSIST_B, sep="p"),
             "nvme0n10": stick("nvme0n10", "aaaaaaaa-1111-4222-8333-444455556666", PERSIST_A,
                               sep="p")}
    out, _ = find(shell, tmp_path, disks, esp=ESP_B)
    assert (out["PERSIST_DEV"], out["PERSIST_UUID"]) == ("nvme0n1p4", PERSIST_B), out



@pytest.mark.parametrize("shell", SHELLS)
def test_without_a_word_sticks_appearing_a_moment_apart_are_all_weighed(
        tmp_path: Path, shell: str) -> None:
    # Two sticks plugged in together: usb-storage scans each a second after
    # it is seen, so one appears first. The lowest PARTUUID of both boots.
    first = {"sdb": stick("sdb", ESP_B, PERSIST_B)}
    both = {**first, "sda": stick("sda", "aaaaaaaa-1111-4222-8333-444455556666", PERSIST_A)}
    out, log = find(shell, tmp_path, first, later=both, later_at=1)
    assert (out["PERSIST_DEV"], out["PERSIST_UUID"]) == ("sda4", PERSIST_A), out
    assert "anklume: 2 anklume sticks are plugged in; booting the one whose PERSIST is " \
           f"PARTUUID={PERSIST_A} (/dev/sda4)" in out["said"], out
    assert [line for line in log if line.startswith("SLEEP")] == ["SLEEP 1"], log
