"""The shutdown half the initramfs leaves in /run/initramfs
(``anklume-boot.sh`` prepare_shutdown; systemd-shutdown runs it at the end:
tests/vm/test_boot.py boots it): every file the hook listed, with one
process a directory rather than two a file (each costs at boot), under
busybox sh and dash as the boot runs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_boot_redirect import INITRAMFS, SHELLS, run_harness

SHUTDOWN_DRIVER = """
mount() { echo "MOUNT $*" >> "$LOG"; }  # FAKE: the tests' directory is the tmpfs
cp() { echo "CP $#" >> "$LOG"; command cp "$@"; }
mkdir() { echo "MKDIR" >> "$LOG"; command mkdir "$@"; }
prepare_shutdown
"""


@pytest.mark.parametrize("shell", SHELLS)
def test_the_shutdown_half_is_copied_with_a_process_a_directory(tmp_path: Path,
                                                                 shell: str) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "anklume-shutdown.sh").write_text((INITRAMFS / "anklume-shutdown.sh").read_text())
    (lib / "anklume-shutdown.sh").chmod(0o755)
    sources = [tmp_path / "src/sbin/dmsetup", tmp_path / "src/lib/x86_64-linux-gnu/libc.so.6",
               tmp_path / "src/lib/x86_64-linux-gnu/libdevmapper.so.1.02.1",
               tmp_path / "src/lib64/ld-linux-x86-64.so.2"]
    for source in sources:
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"the bytes of {source.name}\n")
    missing = tmp_path / "src/lib/x86_64-linux-gnu/libgone.so.1"
    (lib / "shutdown-files").write_text("".join(f"{p}\n" for p in sorted([*sources, missing])))
    root, log = tmp_path / "run-initramfs", tmp_path / "log"
    script = (INITRAMFS / "anklume-boot.sh").read_text().removesuffix('main "$@"\n')
    harness = tmp_path / "shutdown-harness.sh"
    harness.write_text(f"{script}\nSHUTDOWN_ROOT={root}\nLOG={log}\n{SHUTDOWN_DRIVER}")
    run_harness(shell, harness, {"ANKLUME_LIB": str(lib), "ANKLUME_RUN": str(tmp_path / "run")})
    for source in sources:
        assert (root / source.relative_to("/")).read_text() == source.read_text()
    assert (root / "shutdown").stat().st_mode & 0o111 == 0o111
    assert (root / "bin" / "busybox").stat().st_size > 0
    for empty in ("oldroot", "proc", "sys", "dev", "run"):
        assert (root / empty).is_dir()
    # busybox, the script, and one cp for each of the three directories
    calls = log.read_text().splitlines()
    assert calls[0] == "MKDIR", calls
    assert calls[1] == f"MOUNT -t tmpfs -o mode=0755 anklume-shutdown {root}", calls
    assert calls[2:] == ["MKDIR", "CP 2", "CP 2", "CP 4", "CP 2", "CP 2"], calls
