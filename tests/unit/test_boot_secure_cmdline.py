"""What the boot loader tells the initramfs, and what a command line cannot
(docs/boot-chain.md, "What the signature covers").

``anklume-boot.sh``'s ``read_efi_boot`` and ``pick_persist`` against a
directory standing for efivarfs (FAKE: the variables' exact bytes, no
firmware): under Secure Boot the kernel's slot comes from systemd-stub's
``StubImageIdentifier`` and the stick from the ESP's
``LoaderDevicePartUUID``, whatever the command line says; without it the
command line's keys win, and without EFI variables they are all there is.
The initramfs's callers drop the ``ANKLUME_*`` overrides the kernel would
hand over from its command line. Under busybox sh and dash, as the boot
runs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_boot_find_stick import FAKES, fake_sysfs, stick, uuid_table
from tests.unit.test_boot_redirect import GUID, INITRAMFS, SHELLS, run_harness, utf16

GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
ESP = "C0FFEE00-1111-4222-8333-444455556666"  # as systemd-boot writes it: upper case
OTHER_PERSIST = "aaaaaaaa-0000-4000-8000-000000000001"

# Two sticks (FAKE sysfs and blkid, tests/unit/test_boot_find_stick.py); the
# ESP of LoaderDevicePartUUID is sdb1, on sdb. The first PERSIST by
# PARTUUID is sda's: the one a boot without the ESP's word would take.
DRIVER = """
read_cmdline
read_efi_boot
pick_persist || echo NO_PERSIST
echo "SECURE_BOOT=$SECURE_BOOT KERNEL=$KERNEL PERSIST_DEV=$PERSIST_DEV"
echo "STATE_CMDLINE=$(cat "$CMDLINE")"
"""
EFI_FAKES = """
mount_efivars() { [ -d "$EFIVARS" ]; }  # FAKE: the tests' directory needs no mount
release_efivars() { :; }
"""
STICKS = {"sda": stick("sda", "aaaaaaaa-1111-4222-8333-444455556666", OTHER_PERSIST),
          "sdb": stick("sdb", ESP, "bbbbbbbb-0000-4000-8000-000000000002")}


def fake_efivars(tmp_path: Path, secure_boot: int | None, uki: str | None = None,
                 esp: str | None = ESP) -> Path:
    """The variables the firmware, systemd-boot and systemd-stub set."""
    d = tmp_path / "efivars"
    d.mkdir()
    if secure_boot is not None:
        (d / f"SecureBoot-{GLOBAL_GUID}").write_bytes(b"\x06\x00\x00\x00" + bytes([secure_boot]))
    if uki is not None:
        (d / f"StubImageIdentifier-{GUID}").write_bytes(b"\x06\x00\x00\x00" + utf16(uki))
    if esp is not None:
        (d / f"LoaderDevicePartUUID-{GUID}").write_bytes(b"\x06\x00\x00\x00" + utf16(esp))
    return d


def boot(shell: str, tmp_path: Path, cmdline: str, vars_dir: Path | None) -> dict[str, str]:
    script = (INITRAMFS / "anklume-boot.sh").read_text()
    harness = tmp_path / "boot-harness.sh"
    fakes = (f"{FAKES}{EFI_FAKES}SYSFS={fake_sysfs(tmp_path / 'sys', STICKS)}\n"
             f"LOG={tmp_path / 'log'}\nUUID_TABLE={uuid_table(tmp_path / 'uuids', STICKS)}\n")
    harness.write_text(script.removesuffix('main "$@"\n') + fakes + DRIVER)
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    env = {"ANKLUME_LIB": str(INITRAMFS), "ANKLUME_CMDLINE": str(tmp_path / "cmdline"),
           "ANKLUME_RUN": str(tmp_path / "run"),
           "ANKLUME_EFIVARS": str(vars_dir or tmp_path / "no-efivars")}
    result = run_harness(shell, harness, env)
    out: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line.startswith("STATE_CMDLINE="):
            out["cmdline"] = line.removeprefix("STATE_CMDLINE=")
        elif line.startswith("SECURE_BOOT="):
            out.update(word.split("=", 1) for word in line.split())  # type: ignore[misc]
        elif line == "NO_PERSIST":
            out["no_persist"] = "1"
    return out


EDITED = (f"boot=anklume anklume.persist=PARTUUID={OTHER_PERSIST} anklume.kernel=A "
          "anklume.toram=1 quiet")


@pytest.mark.parametrize("shell", SHELLS)
def test_under_secure_boot_the_efi_variables_name_the_kernel_and_the_stick(
        tmp_path: Path, shell: str) -> None:
    # A command line naming the other stick and slot A's kernel (what an edited
    # entry would say, were systemd-stub to pass it): slot B's UKI runs from sdb.
    vars_dir = fake_efivars(tmp_path, 1, r"\EFI\anklume\slot-b.efi")
    out = boot(shell, tmp_path, EDITED, vars_dir)
    assert (out["SECURE_BOOT"], out["KERNEL"], out["PERSIST_DEV"]) == ("1", "B", "sdb4"), out
    # anklume-state.sh reads the kernel's slot from the last word
    assert out["cmdline"].split()[-1] == "anklume.kernel=B", out


@pytest.mark.parametrize("shell", SHELLS)
def test_without_secure_boot_the_command_line_wins(tmp_path: Path, shell: str) -> None:
    vars_dir = fake_efivars(tmp_path, 0, r"\EFI\anklume\slot-b.efi")
    out = boot(shell, tmp_path, EDITED, vars_dir)
    assert (out["SECURE_BOOT"], out["KERNEL"], out["PERSIST_DEV"]) == ("0", "A", "sda4"), out


@pytest.mark.parametrize("shell", SHELLS)
def test_without_the_keys_the_boot_loader_names_them(tmp_path: Path, shell: str) -> None:
    # Secure Boot off (or a firmware without the variable), a profile's own
    # command line: the stub's file and the ESP's disk.
    vars_dir = fake_efivars(tmp_path, None, r"\EFI\ANKLUME\SLOT-A.EFI")
    out = boot(shell, tmp_path, "boot=anklume anklume.toram=0 quiet", vars_dir)
    assert (out["SECURE_BOOT"], out["KERNEL"], out["PERSIST_DEV"]) == ("0", "A", "sdb4"), out


@pytest.mark.parametrize("shell", SHELLS)
def test_without_efi_variables_the_command_line_is_all_there_is(tmp_path: Path,
                                                                 shell: str) -> None:
    # The VM tier's direct kernel boot (-kernel): no /sys/firmware/efi.
    out = boot(shell, tmp_path, EDITED, None)
    assert (out["SECURE_BOOT"], out["KERNEL"], out["PERSIST_DEV"]) == ("0", "A", "sda4"), out
    assert out["cmdline"] == EDITED, out


@pytest.mark.parametrize("shell", SHELLS)
def test_a_secure_boot_whose_esp_is_not_plugged_finds_no_stick(tmp_path: Path,
                                                               shell: str) -> None:
    # The ESP's disk holds no PERSIST (or has not appeared yet): never another stick's.
    vars_dir = fake_efivars(tmp_path, 1, r"\EFI\anklume\slot-a.efi",
                            esp="01234567-89ab-4cde-8f01-23456789abcd")
    out = boot(shell, tmp_path, EDITED, vars_dir)
    assert out.get("no_persist") == "1", out


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("caller", [
    "initramfs-tools/scripts/anklume", "mkinitcpio/hooks/anklume"])
def test_the_initramfs_callers_drop_the_overrides(tmp_path: Path, shell: str,
                                                  caller: str) -> None:
    # ANKLUME_KEYS=/nowhere on the command line reaches init as environment.
    seen = tmp_path / "seen-environment"
    fake_boot = tmp_path / "anklume-boot.sh"  # FAKE: records what it was given
    fake_boot.write_text(f'env > "{seen}"\n')
    text = (INITRAMFS / caller).read_text().replace("/lib/anklume/anklume-boot.sh",
                                                    str(fake_boot))
    (tmp_path / "caller.sh").write_text(text + "\nanklume_boot /root\n")
    program, *options = shell.split()
    # Every override the boot scripts read, found in them (a new one is covered too).
    read = set(re.findall(r"ANKLUME_[A-Z][A-Z_]*", "".join(
        p.read_text() for p in INITRAMFS.glob("*.sh"))))
    assert "ANKLUME_KEYS" in read
    env = {"PATH": os.environ["PATH"], "UNRELATED": "kept", **dict.fromkeys(read, "/nowhere")}
    result = subprocess.run([shutil.which(program) or program, *options,
                             str(tmp_path / "caller.sh")], capture_output=True, text=True,
                            timeout=30, check=False, env=env)
    assert result.returncode == 0, result.stderr
    environment = seen.read_text()
    assert "UNRELATED=kept" in environment
    assert "ANKLUME_" not in environment, environment
