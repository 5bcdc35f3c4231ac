"""The redirect's shell half (docs/boot-chain.md, "The redirect").

``anklume-redirect.sh`` against a directory standing for efivarfs (the
variables' exact bytes: 4 bytes of attributes, then a NUL-terminated
UTF-16LE string), and ``anklume-state.sh redirect-mark``/``redirect-take``
against a PERSIST directory: the boot after a redirect takes the decision
that was counted instead of counting it again, and a request that did not
land is never made twice in a row. Under busybox sh and dash, as the boot
runs them.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

INITRAMFS = Path(__file__).resolve().parents[2] / "initramfs"
REDIRECT = INITRAMFS / "anklume-redirect.sh"
STATE = INITRAMFS / "anklume-state.sh"
SHELLS = ["busybox sh", "dash"]
GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
ATTRIBUTES = b"\x07\x00\x00\x00"  # NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS
# What systemd-boot 257 lists for a stick whose primary is A and whose slot B
# is ok: ids are the file names, lower-cased, ".conf" kept.
MENU_A = ["anklume-1-live-a+2-1.conf", "anklume-2-slot-b.conf", "anklume-3-stick-a.conf",
          "anklume-4-slot-a.conf", "auto-reboot-to-firmware-setup"]


def utf16(*strings: str) -> bytes:
    return b"".join(s.encode("utf-16-le") + b"\0\0" for s in strings)


def efivars(tmp_path: Path, entries: list[str]) -> Path:
    """A directory standing for efivarfs, with what systemd-boot set this boot."""
    d = tmp_path / "efivars"
    d.mkdir()
    (d / f"LoaderEntries-{GUID}").write_bytes(b"\x06\x00\x00\x00" + utf16(*entries))
    return d


@functools.cache
def busybox_applets() -> str:
    """A directory of busybox's applets, first on PATH under busybox sh: the
    initramfs has busybox's od, wc, dd, not coreutils'."""
    applets = Path(tempfile.mkdtemp(prefix="anklume-busybox-"))
    atexit.register(shutil.rmtree, applets, True)
    busybox = shutil.which("busybox")
    assert busybox is not None
    listed = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for name in listed.stdout.split():
        (applets / name).symlink_to(busybox)
    return str(applets)


def sh(shell: str, script: Path, *args: str | Path, tmp: Path | None = None,
       path: str | None = None) -> subprocess.CompletedProcess[str]:
    if path is None:
        path = os.environ["PATH"]
        if shell.startswith("busybox"):
            path = f"{busybox_applets()}:{path}"
    env = {"PATH": path, **({"TMPDIR": str(tmp)} if tmp else {})}
    program, *options = shell.split()
    argv = [shutil.which(program) or program, *options, str(script), *map(str, args)]
    return subprocess.run(argv, capture_output=True,
                          text=True, timeout=30, check=False, env=env)


# ---- the boot loader's variables ---------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("slot", "toram", "entries", "expected"), [
    ("B", "1", MENU_A, "anklume-2-slot-b.conf"),
    # The running boot's toram choice is kept when an entry of the slot has it.
    ("A", "1", MENU_A, "anklume-3-stick-a.conf"),
    ("A", "0", MENU_A, "anklume-3-stick-a.conf"),
    ("b", "0", MENU_A, "anklume-2-slot-b.conf"),
    # The specification's ids (no ".conf") are taken as listed.
    ("B", "1", ["anklume-1-live-a+3-0", "anklume-2-slot-b"], "anklume-2-slot-b"),
    # Never the counted default entry: a redirect must not spend a try.
    ("B", "1", ["anklume-1-live-b+3-0.conf", "anklume-4-slot-b.conf"], "anklume-4-slot-b.conf"),
    ("B", "1", ["anklume-1-live-b+3-0.conf", "anklume-2-slot-a.conf"], None),
    ("B", "1", ["anklume-2-slot-bb.conf", "xanklume-2-slot-b.conf"], None),
    ("B", "1", [], None),
])
def test_the_entry_that_starts_the_slots_own_kernel(tmp_path: Path, shell: str, slot: str,
                                                    toram: str, entries: list[str],
                                                    expected: str | None) -> None:
    result = sh(shell, REDIRECT, "entry", efivars(tmp_path, entries), slot, toram)
    assert (result.stdout.strip() or None, result.returncode) == (expected, 0 if expected else 1)


@pytest.mark.parametrize("shell", SHELLS)
def test_no_loader_entries_no_entry(tmp_path: Path, shell: str) -> None:
    """Booted by another loader (or no EFI variables at all): nothing to ask."""
    result = sh(shell, REDIRECT, "entry", tmp_path, "B", "1")
    assert (result.stdout, result.returncode) == ("", 1)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_one_shot_variable_has_efivarfs_byte_format(tmp_path: Path, shell: str) -> None:
    d = efivars(tmp_path, MENU_A)
    result = sh(shell, REDIRECT, "set", d, "anklume-2-slot-b.conf", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (d / f"LoaderEntryOneShot-{GUID}").read_bytes() == \
        ATTRIBUTES + "anklume-2-slot-b.conf".encode("utf-16-le") + b"\0\0"
    assert sh(shell, REDIRECT, "get", d, "LoaderEntryOneShot").stdout == \
        "anklume-2-slot-b.conf\n"
    assert not list(tmp_path.glob("anklume-oneshot.*")), "the staging file stays behind"
    assert sh(shell, REDIRECT, "clear", d).returncode == 0
    assert not (d / f"LoaderEntryOneShot-{GUID}").exists()


def immutable(path: Path) -> bool:
    """chattr +i as efivarfs sets it on a variable it does not know (root, ext4)."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True,
                          check=False).returncode == 0


@pytest.mark.parametrize("shell", SHELLS)
def test_an_immutable_variable_left_set_is_replaced(tmp_path: Path, shell: str) -> None:
    d = efivars(tmp_path, MENU_A)
    old = d / f"LoaderEntryOneShot-{GUID}"
    old.write_bytes(ATTRIBUTES + utf16("anklume-4-slot-a.conf"))
    if not immutable(old):
        pytest.skip("chattr +i needs root and a filesystem with the flag (CI runs as root)")
    try:
        result = sh(shell, REDIRECT, "set", d, "anklume-2-slot-b.conf", tmp=tmp_path)
        assert result.returncode == 0, result.stderr
        assert old.read_bytes() == ATTRIBUTES + utf16("anklume-2-slot-b.conf")
        # Without chattr the flag stays: the write fails, in one sentence.
        subprocess.run(["chattr", "+i", str(old)], check=True)
        bare = tmp_path / "bin"
        bare.mkdir()
        for tool in ("tail", "od", "awk", "dd", "cmp", "wc", "rm", "head", "tr"):
            found = shutil.which(tool, path=f"{busybox_applets()}:{os.environ['PATH']}")
            assert found is not None
            (bare / tool).symlink_to(found)
        refused = sh(shell, REDIRECT, "set", d, "anklume-3-stick-a.conf", tmp=tmp_path,
                     path=str(bare))
        assert refused.returncode == 1
        assert refused.stderr.startswith("anklume-redirect: the firmware refused")
        assert old.read_bytes() == ATTRIBUTES + utf16("anklume-2-slot-b.conf")
    finally:
        subprocess.run(["chattr", "-i", str(old)], check=False)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_write_that_fails_says_so_and_leaves_nothing(tmp_path: Path, shell: str) -> None:
    d = efivars(tmp_path, MENU_A)
    (d / f"LoaderEntryOneShot-{GUID}").mkdir()  # nothing can be written there
    result = sh(shell, REDIRECT, "set", d, "anklume-2-slot-b.conf", tmp=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "LoaderEntryOneShot" in result.stderr
    assert not list(tmp_path.glob("anklume-oneshot.*"))
    gone = sh(shell, REDIRECT, "set", tmp_path / "none", "anklume-2-slot-b.conf", tmp=tmp_path)
    assert gone.returncode == 1 and "no EFI variables" in gone.stderr


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("entry", ["", "anklume 2", "a\\x00b", "../x", "Anklume-2"])
def test_an_entry_id_that_is_not_one_is_refused(tmp_path: Path, shell: str, entry: str) -> None:
    d = efivars(tmp_path, MENU_A)
    result = sh(shell, REDIRECT, "set", d, entry, tmp=tmp_path)
    assert result.returncode == 1 and "is not a boot entry id" in result.stderr
    assert not (d / f"LoaderEntryOneShot-{GUID}").exists()


# ---- PERSIST: the attempt is counted once ----------------------------------------


def exhausted_a(tmp_path: Path) -> Path:
    """Slot A used its three attempts, B is ok: this boot rolls back to B."""
    persist = tmp_path / "persist"
    (persist / "slots").mkdir(parents=True)
    (persist / "ab-state").write_text("A\n")
    (persist / "boot-count").write_text("3\n")
    (persist / "slots" / "A.meta").write_text("STATUS=ok\nLAST_GOOD_AT=2026-11-01T10:00:00Z\n")
    (persist / "slots" / "B.meta").write_text("STATUS=ok\n")
    return persist


def cmdline(tmp_path: Path, kernel: str) -> Path:
    path = tmp_path / f"cmdline-{kernel}"
    path.write_text(f"boot=anklume anklume.kernel={kernel} anklume.toram=1 quiet\n")
    return path


def lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def record_and_mark(shell: str, persist: Path, kernel_file: Path) -> dict[str, str]:
    """What a boot on slot A's kernel does before it restarts: count, then mark."""
    decision = lines(sh(shell, STATE, "record", persist, kernel_file))
    assert (decision["BOOT"], decision["ROLLBACK_REASON"]) == ("B", "boot-count")
    marked = sh(shell, STATE, "redirect-mark", persist, decision["BOOT"], decision["AB_STATE"],
                decision["BOOT_COUNT"], decision["ROLLBACK_REASON"], decision["DEGRADED"])
    assert marked.returncode == 0, marked.stderr
    return decision


@pytest.mark.parametrize("shell", SHELLS)
def test_the_boot_the_redirect_starts_takes_the_counted_decision(tmp_path: Path,
                                                                 shell: str) -> None:
    persist = exhausted_a(tmp_path)
    decided = record_and_mark(shell, persist, cmdline(tmp_path, "A"))
    assert (persist / "boot-count").read_text() == "1\n"
    landed = sh(shell, STATE, "redirect-take", persist, cmdline(tmp_path, "B"))
    assert landed.returncode == 0, landed.stderr
    taken = lines(landed)
    assert taken.pop("REDIRECT") == "landed"
    assert {k: taken[k] for k in decided} == decided  # the rollback, reason included
    assert (persist / "boot-count").read_text() == "1\n", "the attempt was counted twice"
    assert not (persist / "redirect").exists(), "a redirect is used by one boot only"
    # The boot after that one is a new attempt, counted as usual.
    after = lines(sh(shell, STATE, "redirect-take", persist, cmdline(tmp_path, "B")))
    assert after == {"REDIRECT": "none"}
    assert lines(sh(shell, STATE, "record", persist, cmdline(tmp_path, "B")))["BOOT_COUNT"] == "2"


@pytest.mark.parametrize("shell", SHELLS)
def test_a_redirect_that_did_not_land_is_set_aside_and_the_boot_counts(tmp_path: Path,
                                                                       shell: str) -> None:
    """The firmware ignored the one-shot entry (or B's kernel died before its
    initramfs): slot A's kernel runs again. The file goes, the boot counts."""
    persist = exhausted_a(tmp_path)
    record_and_mark(shell, persist, cmdline(tmp_path, "A"))
    missed = lines(sh(shell, STATE, "redirect-take", persist, cmdline(tmp_path, "A")))
    assert missed == {"REDIRECT": "missed", "SLOT": "B"}
    assert not (persist / "redirect").exists()
    assert lines(sh(shell, STATE, "record", persist, cmdline(tmp_path, "A")))["BOOT_COUNT"] == "2"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("edit", "content"), [
    ("boot-count", "0\n"),  # marked good, or given its attempts back by hand, since
    ("ab-state", "A\n"),    # a person chose A again on another computer
    ("redirect", "SLOT=B\nAB_STATE=B\nBOOT_COUNT=x\nROLLBACK_REASON=\nDEGRADED=0\n"),
    ("redirect", "SLOT=B\nAB_STATE=B\nBOOT_COUNT=1\nROLLBACK_REASON=$(reboot)\nDEGRADED=0\n"),
    ("redirect", "\0\xff garbage"),
])
def test_a_redirect_persist_no_longer_agrees_with_is_stale(tmp_path: Path, shell: str,
                                                          edit: str, content: str) -> None:
    persist = exhausted_a(tmp_path)
    record_and_mark(shell, persist, cmdline(tmp_path, "A"))
    (persist / edit).write_text(content)
    taken = sh(shell, STATE, "redirect-take", persist, cmdline(tmp_path, "B"))
    assert (lines(taken), taken.returncode) == ({"REDIRECT": "stale"}, 0)
    assert not (persist / "redirect").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_redirect_that_cannot_be_removed_is_never_taken(tmp_path: Path, shell: str) -> None:
    """Taken without being removed, it would spare every later boot its count."""
    persist = exhausted_a(tmp_path)
    record_and_mark(shell, persist, cmdline(tmp_path, "A"))
    (persist / "redirect").unlink()
    (persist / "redirect").mkdir()
    (persist / "redirect" / "x").write_text("")
    taken = sh(shell, STATE, "redirect-take", persist, cmdline(tmp_path, "B"))
    assert (lines(taken), taken.returncode) == ({"REDIRECT": "stuck"}, 1)
    assert taken.stderr.count("\n") == 1 and "this boot counts" in taken.stderr


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("args", [
    ["C", "B", "1", "", "0"], ["B", "B", "-1", "", "0"], ["B", "B", "1", "x y", "0"],
    ["B", "B", "1", "", "2"], ["B", "B", "1", ""],
])
def test_redirect_mark_refuses_a_decision_that_is_not_one(tmp_path: Path, shell: str,
                                                          args: list[str]) -> None:
    persist = exhausted_a(tmp_path)
    result = sh(shell, STATE, "redirect-mark", persist, *args)
    assert result.returncode == 2 and "redirect-mark needs" in result.stderr
    assert not (persist / "redirect").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_cut_before_the_mark_counts_the_next_boot_as_a_new_attempt(tmp_path: Path,
                                                                    shell: str) -> None:
    """Power cut after the count, before the redirect was written (or after the
    one-shot entry was set but before the mark): the next boot sees no
    redirect and counts, on whichever kernel runs -- the cut boot was an
    attempt, as any cut boot is."""
    persist = exhausted_a(tmp_path)
    assert lines(sh(shell, STATE, "record", persist, cmdline(tmp_path, "A")))["BOOT"] == "B"
    for kernel in ("B", "A"):
        assert lines(sh(shell, STATE, "redirect-take", persist,
                        cmdline(tmp_path, kernel))) == {"REDIRECT": "none"}
    assert lines(sh(shell, STATE, "record", persist, cmdline(tmp_path, "A")))["BOOT_COUNT"] == "2"


# ---- anklume-boot.sh's part: when it restarts, and when it says why not -----------

DRIVER = """
say() { echo "anklume: $*"; }
mount_efivars() { [ -d "$EFIVARS" ]; }  # FAKE: the tests' directory needs no mount
release_efivars() { :; }
unmount_persist() { echo UNMOUNTED; }
reboot() { echo "RESTART $*"; exit 0; }  # FAKE: the machine restarts here
PERSIST_MNT=$TEST_PERSIST
PERSIST_DEV=test
read_cmdline
record_attempt
redirect_if_needed
echo "GOES_ON BOOT=$BOOT BOOT_COUNT=$BOOT_COUNT"
"""


def boot(shell: str, tmp_path: Path, persist: Path, kernel: str | None,
         vars_dir: Path) -> list[str]:
    """anklume-boot.sh up to the slot's opening: its functions, the real state
    and redirect scripts, a FAKE restart."""
    script = (INITRAMFS / "anklume-boot.sh").read_text()
    assert script.endswith('main "$@"\n')
    harness = tmp_path / "boot-harness.sh"
    harness.write_text(script.removesuffix('main "$@"\n') + DRIVER)
    words = "boot=anklume anklume.toram=1" + (f" anklume.kernel={kernel}" if kernel else "")
    (tmp_path / "cmdline").write_text(words + "\n")
    env = {"ANKLUME_LIB": str(INITRAMFS), "ANKLUME_CMDLINE": str(tmp_path / "cmdline"),
           "ANKLUME_EFIVARS": str(vars_dir), "TEST_PERSIST": str(persist), "TMPDIR": str(tmp_path)}
    result = run_harness(shell, harness, env)
    return [line for line in result.stdout.splitlines() if not line.startswith("anklume: count")]


def run_harness(shell: str, harness: Path, env: dict[str, str]
                ) -> subprocess.CompletedProcess[str]:
    """A harness of anklume-boot.sh's functions under ``shell``; it must end well."""
    program, *options = shell.split()
    path = os.environ["PATH"]
    if program == "busybox":
        path = f"{busybox_applets()}:{path}"
    result = subprocess.run([shutil.which(program) or program, *options, str(harness)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={"PATH": path, **env})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def one_shot(vars_dir: Path) -> bytes | None:
    path = vars_dir / f"LoaderEntryOneShot-{GUID}"
    return path.read_bytes()[4:] if path.exists() else None


@pytest.mark.parametrize("shell", SHELLS)
def test_a_rollback_on_the_other_kernel_restarts_then_boots_counted_once(tmp_path: Path,
                                                                        shell: str) -> None:
    persist = exhausted_a(tmp_path)
    vars_dir = efivars(tmp_path, MENU_A)
    first = boot(shell, tmp_path, persist, "A", vars_dir)
    assert first[-2:] == ["UNMOUNTED", "RESTART -f"], first
    assert any("restarting into boot entry anklume-2-slot-b.conf" in line for line in first)
    assert one_shot(vars_dir) == utf16("anklume-2-slot-b.conf")
    assert (persist / "redirect").exists() and (persist / "boot-count").read_text() == "1\n"
    (vars_dir / f"LoaderEntryOneShot-{GUID}").unlink()  # systemd-boot read it
    second = boot(shell, tmp_path, persist, "B", vars_dir)
    assert second[-1] == "GOES_ON BOOT=B BOOT_COUNT=1", second
    assert (persist / "boot-count").read_text() == "1\n"
    assert not (persist / "redirect").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_redirect_that_did_not_land_is_not_made_again(tmp_path: Path, shell: str) -> None:
    persist = exhausted_a(tmp_path)
    vars_dir = efivars(tmp_path, MENU_A)
    boot(shell, tmp_path, persist, "A", vars_dir)
    again = boot(shell, tmp_path, persist, "A", vars_dir)  # the firmware ignored it
    assert again[-1] == "GOES_ON BOOT=B BOOT_COUNT=2", again
    assert any("boots on slot A's kernel for this boot: the previous boot already restarted"
               in line for line in again), again
    assert not (persist / "redirect").exists()


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("setup", "why"), [
    ("no-efivars", "the firmware offers no EFI variables"),
    ("no-entry", "the boot menu has no entry of slot B's own kernel"),
    ("write-fails", "LoaderEntryOneShot) could not be set"),
    ("persist-fails", "the restart could not be recorded on PERSIST"),
])
def test_without_a_way_to_redirect_the_slot_boots_on_this_kernel(tmp_path: Path, shell: str,
                                                                 setup: str, why: str) -> None:
    persist = exhausted_a(tmp_path)
    vars_dir = efivars(tmp_path, ["anklume-1-live-a+1-2.conf"] if setup == "no-entry"
                       else MENU_A)
    if setup == "no-efivars":
        shutil.rmtree(vars_dir)
    if setup == "write-fails":
        (vars_dir / f"LoaderEntryOneShot-{GUID}").mkdir()
    if setup == "persist-fails":
        (persist / "redirect.tmp").mkdir()
    out = boot(shell, tmp_path, persist, "A", vars_dir)
    assert out[-1] == "GOES_ON BOOT=B BOOT_COUNT=1", out
    said = [line for line in out if "slot B boots on slot A's kernel for this boot" in line]
    assert len(said) == 1 and why in said[0], out
    assert not (persist / "redirect").exists()
    if setup != "write-fails":
        assert not (vars_dir / f"LoaderEntryOneShot-{GUID}").exists()


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("kernel", [None, "B"])
def test_no_redirect_when_the_kernel_is_the_slots_own_or_unknown(tmp_path: Path, shell: str,
                                                                  kernel: str | None) -> None:
    persist = exhausted_a(tmp_path)
    vars_dir = efivars(tmp_path, MENU_A)
    out = boot(shell, tmp_path, persist, kernel, vars_dir)
    assert out[-1] == "GOES_ON BOOT=B BOOT_COUNT=1", out
    assert one_shot(vars_dir) is None and not (persist / "redirect").exists()
