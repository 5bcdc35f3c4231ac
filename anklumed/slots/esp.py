"""The stick's ESP (ANKLUME-EFI), written without mounting it (docs/boot-chain.md).

FAT is not journalled and a rename on it is not atomic, so nothing here is
written in place: a new file takes a name no entry refers to, is read back,
and only then replaces the old one; boot entries change by new names written
first and old ones deleted after. Every step is one mtools command on the
partition, followed by a flush of the device, so a power cut falls between
steps (tests/service/test_esp_power_cut.py cuts at each). mtools, not a
mount: the ESP is never mounted, the stick stays safe to pull, and the same
code runs where the kernel has no vfat (the service tier).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from pathlib import Path

from anklumed.command import CommandError, run
from anklumed.errors import Failed, VerificationFailed
from anklumed.slots import boot_entries
from anklumed.slots.boot_entries import EntryPlan
from anklumed.stick import SlotName

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}  # a partition, not a floppy: no geometry checks
TIMEOUT = 300.0  # a UKI is tens of MiB; a slow stick writes a few MiB/s
MIB = 1024 * 1024
# mdir's summary ("1 234 567 bytes free": digits grouped with the locale's
# separator).
FREE = re.compile(rb"([\d][\d ,.']*) bytes free")
StepHook = Callable[[str], None]


class EspError(Failed):
    """The ESP could not be read or written (the message says which file)."""


class Esp:
    """The FAT filesystem of the ESP partition (or of an image file, in tests)."""

    def __init__(self, device: Path, step_hook: StepHook | None = None) -> None:
        self.device = device
        self.step_hook = step_hook

    def _step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    def _mtools(self, argv: list[str | Path], doing: str, input: bytes | None = None,
                timeout: float = 60.0) -> bytes:
        try:
            return run([argv[0], "-i", self.device, *argv[1:]], timeout=timeout,
                       env=MTOOLS_ENV, input=input).stdout
        except CommandError as e:
            raise EspError(f"cannot {doing} on the ESP ({self.device}): {e.stderr.strip()[-200:]}"
                           ) from None

    def flush(self) -> None:
        """What mtools wrote, on the device before the next step."""
        fd = os.open(self.device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- reading ----------------------------------------------------------
    def _mdir(self, directory: str) -> list[str]:
        """``mdir -b`` lines (full paths, a directory's ending in /); [] if absent."""
        out = run(["mdir", "-i", self.device, "-b", f"::/{directory}"], timeout=60,
                  env=MTOOLS_ENV, check=False)
        if out.returncode != 0:
            return []
        return out.stdout.decode(errors="replace").splitlines()

    def listing(self, directory: str) -> list[str]:
        """The file names in ``directory`` (not sub-directories); [] if absent."""
        return [line.rsplit("/", 1)[-1] for line in self._mdir(directory)
                if line and not line.endswith("/")]

    def _subdirectories(self, directory: str) -> list[str]:
        return [line.rstrip("/").rsplit("/", 1)[-1] for line in self._mdir(directory)
                if line.endswith("/")]

    def read_back_sha256(self, path: str) -> str:
        """The sha256 of a file as the device returns it. mtype streams it into
        sha256sum: a UKI (tens of MiB) is never held whole. A file that cannot
        be read hashes as what could be read, which then matches nothing."""
        try:
            out = run(["sh", "-c", 'mtype -i "$0" "::/$1" | sha256sum', self.device, path],
                      timeout=TIMEOUT, env=MTOOLS_ENV)
        except CommandError as e:
            raise EspError(f"cannot read {path} back from the ESP: {e.stderr.strip()[-200:]}"
                           ) from None
        return out.stdout.decode().split()[0]

    def free_bytes(self) -> int:
        out = self._mtools(["mdir", "::/"], "read the free space")
        found = FREE.search(out)
        if found is None:
            raise EspError(f"cannot read the free space of the ESP ({self.device})")
        return int(re.sub(rb"\D", b"", found.group(1)))

    # ---- writing ----------------------------------------------------------
    def make_dirs(self, *directories: str) -> None:
        for directory in directories:
            parent, _, leaf = directory.rpartition("/")
            if leaf not in self._subdirectories(parent):
                self._mtools(["mmd", f"::/{directory}"], f"make {directory}")

    def delete(self, path: str) -> None:
        directory, _, name = path.rpartition("/")
        if name in self.listing(directory):
            self._step(f"delete {name}")
            self._mtools(["mdel", f"::/{path}"], f"delete {path}")
            self.flush()

    def write_new(self, path: str, data: bytes) -> None:
        """A small file under a name that is not there yet."""
        self._step(f"write {path.rsplit('/', 1)[-1]}")
        self._mtools(["mcopy", "-", f"::/{path}"], f"write {path}", input=data)
        self.flush()

    def rename(self, source: str, target: str) -> None:
        self._step(f"rename {source.rsplit('/', 1)[-1]}")
        self._mtools(["mmove", f"::/{source}", f"::/{target}"], f"rename {source}")
        self.flush()

    # ---- what the slots need ----------------------------------------------
    def slots_with_kernel(self) -> set[SlotName]:
        present = set(self.listing(boot_entries.UKI_DIR))
        return {s for s in SlotName if boot_entries.uki_path(s).rsplit("/", 1)[-1] in present}

    def slots_with_profiles(self, kernels: Collection[SlotName] | None = None) -> set[SlotName]:
        """The slots whose UKI carries the command-line profiles (a UKI made
        before them has none, and systemd-stub refuses an ``@N`` it lacks);
        ``kernels``: slots_with_kernel() as the caller just read it."""
        if kernels is None:
            kernels = self.slots_with_kernel()
        return {s for s in kernels if ".profile"
                in boot_entries.pe_section_names(self._head(boot_entries.uki_path(s)))}

    def _head(self, path: str, size: int = 4096) -> bytes:
        """A file's first bytes, without reading the tens of MiB after them
        (``head`` closes the pipe; mtype stops there)."""
        return run(["sh", "-c", f'mtype -i "$0" "::/$1" | head -c {size}', self.device, path],
                   env=MTOOLS_ENV, check=False).stdout

    def entries(self) -> list[str]:
        return [n for n in self.listing(boot_entries.ENTRIES_DIR) if boot_entries.is_ours(n)]

    def install_uki(self, slot: SlotName, write: Callable[[Path, str], None], sha256: str,
                    size: int | None = None) -> None:
        """Put a slot's UKI in place: ``write(device, path)`` copies it (``size``
        bytes) to a temporary name, which is read back and compared with
        ``sha256`` (the signed manifest's) before it takes the slot's UKI's name.

        The slot's old UKI goes first: the slot is ``pending`` while it is
        written, so nothing boots that kernel (its entries vanish from the
        menu meanwhile), and the ESP needs room for two UKIs, not three.
        mcopy says nothing in its exit status when the ESP is full (it
        writes what fits): the free space is compared before."""
        temporary = boot_entries.uki_temporary(slot)
        self.make_dirs("EFI", boot_entries.UKI_DIR)
        self.delete(temporary)  # left by an update cut short
        self.delete(boot_entries.uki_path(slot))
        if size is not None and (free := self.free_bytes()) < size:
            raise EspError(f"the ESP ({self.device}) has no room for slot {slot}'s kernel: "
                           f"{size / MIB:.1f} MiB needed, {free / MIB:.1f} MiB free")
        self._step("write uki")
        write(self.device, temporary)
        self.flush()
        if self.read_back_sha256(temporary) != sha256:
            self.delete(temporary)
            raise VerificationFailed(f"slot {slot}'s kernel (UKI) read back from the ESP is not "
                                     "the one the manifest pins: the stick may be failing")
        self.rename(temporary, boot_entries.uki_path(slot))

    def remove_uki(self, slot: SlotName) -> None:
        self.delete(boot_entries.uki_temporary(slot))
        self.delete(boot_entries.uki_path(slot))

    def apply(self, entry_plan: EntryPlan) -> None:
        """New entries first, then the old ones go."""
        if entry_plan.empty:
            return
        self.make_dirs("loader", boot_entries.ENTRIES_DIR)
        for name, text in entry_plan.write.items():
            self.write_new(f"{boot_entries.ENTRIES_DIR}/{name}", text.encode())
        for name in entry_plan.delete:
            self.delete(f"{boot_entries.ENTRIES_DIR}/{name}")

