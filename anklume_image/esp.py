"""Stage ``esp``: the EFI system partition as a FAT image, filled with mtools.

systemd-boot is the loader (the removable-media path, so any firmware finds
it); slot A's UKI (made by the rootfs stage, docs/boot-chain.md) is
``EFI/anklume/slot-a.efi``. The boot menu is what anklumed keeps it as
(``anklumed/slots/boot_entries.py``): the default entry, counted by
systemd-boot, then the default without toram and slot A forced; slot B,
empty, has no kernel and so no entry; an image with several desktops has an
entry for each one after the first. Every entry names this stick's PERSIST
partition, so that with two anklume sticks plugged in the initramfs never
reads the other one's state.
"""

from __future__ import annotations

from pathlib import Path

from anklume_image.config import BuildConfig
from anklume_image.errors import BuildError
from anklumed.command import run
from anklumed.slots import boot_entries
from anklumed.slots.model import DEFAULT_ATTEMPTS
from anklumed.stick import SlotName

ESP_LABEL = "ANKLUME-EFI"  # FAT labels hold 11 characters: this one fits exactly


def entries(persist_partuuid: str, desktops: tuple[str, ...] = ()) -> dict[str, str]:
    """The first boot menu: slot A primary, the only slot with a kernel;
    an entry for each desktop after the image's default one."""
    return boot_entries.wanted_entries(SlotName.A, {SlotName.A}, DEFAULT_ATTEMPTS,
                                       persist_partuuid, desktops)


def make_esp(config: BuildConfig, boot: Path, uki: Path, persist_partuuid: str,
             work: Path) -> Path:
    out = work / "esp.img"
    out.unlink(missing_ok=True)
    # FAT32 as the UEFI specification asks, where the size allows it (test
    # images use small partitions; firmware reads FAT16 too).
    fat = ["-F", "32"] if config.efi_mib >= 64 else []
    run(["mkfs.vfat", "-C", *fat, "-n", ESP_LABEL, out, str(config.efi_mib * 1024)],
        timeout=120)
    loader = work / "esp-files"
    (loader / "entries").mkdir(parents=True, exist_ok=True)
    (loader / "loader.conf").write_text(boot_entries.LOADER_CONF)
    for name, text in entries(persist_partuuid, tuple(d.value for d in config.sessions)).items():
        (loader / "entries" / name).write_text(text)
    systemd_boot = boot / "efi" / f"systemd-boot{config.arch_efi}.efi"
    if not systemd_boot.exists():
        raise BuildError(f"the image has no {systemd_boot.name} (systemd-boot-efi)")
    mtools = ["-i", str(out)]
    run(["mmd", *mtools, "::/EFI", "::/EFI/BOOT", f"::/{boot_entries.UKI_DIR}", "::/loader",
         f"::/{boot_entries.ENTRIES_DIR}"], timeout=60)
    copies = [
        (systemd_boot, f"::/EFI/BOOT/BOOT{config.arch_efi.upper()}.EFI"),
        (uki, f"::/{boot_entries.uki_path(SlotName.A)}"),
        (loader / "loader.conf", "::/loader/loader.conf"),
    ]
    copies += [(p, f"::/{boot_entries.ENTRIES_DIR}/{p.name}")
               for p in sorted((loader / "entries").iterdir())]
    for src, dst in copies:
        run(["mcopy", *mtools, "-o", src, dst], timeout=120)
    return out
