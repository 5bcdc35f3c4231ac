"""Stage ``esp``: the EFI system partition as a FAT image, filled with mtools.

systemd-boot is the loader (the removable-media path, so any firmware finds
it); the kernel and initramfs come out of the rootfs stage. The boot menu has
the seed's entries: the default (toram), without toram, and each slot forced.
Every entry names this stick's PERSIST partition, so that with two anklume
sticks plugged in the initramfs never reads the other one's state.
"""

from __future__ import annotations

from pathlib import Path

from anklume_image.config import BuildConfig
from anklume_image.errors import BuildError
from anklumed.command import run

ESP_LABEL = "ANKLUME-EFI"  # FAT labels hold 11 characters: this one fits exactly
ENTRIES = {
    # file name: (title, extra kernel options)
    "anklume-1-toram": ("anklume Live", "anklume.toram=1"),
    "anklume-2-stick": ("anklume Live (run from the stick)", "anklume.toram=0"),
    "anklume-3-slot-a": ("anklume Live, slot A", "anklume.toram=0 anklume.slot=A"),
    "anklume-4-slot-b": ("anklume Live, slot B", "anklume.toram=0 anklume.slot=B"),
}


def kernel_files(boot: Path) -> tuple[Path, Path]:
    """The one kernel and its initramfs in the rootfs's /boot."""
    kernels = sorted(boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in the image's /boot, found {len(kernels)}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = boot / f"initrd.img-{version}"
    if not initrd.exists():
        raise BuildError(f"the image has no initramfs for kernel {version}")
    return kernels[0], initrd


def loader_entry(title: str, options: str, persist_partuuid: str, version: str) -> str:
    return (f"title {title}\nversion {version}\nlinux /anklume/vmlinuz\n"
            f"initrd /anklume/initrd.img\noptions boot=anklume "
            f"anklume.persist=PARTUUID={persist_partuuid} {options} quiet\n")


def make_esp(config: BuildConfig, boot: Path, persist_partuuid: str, work: Path) -> Path:
    out = work / "esp.img"
    out.unlink(missing_ok=True)
    # FAT32 as the UEFI specification asks, where the size allows it (test
    # images use small partitions; firmware reads FAT16 too).
    fat = ["-F", "32"] if config.efi_mib >= 64 else []
    run(["mkfs.vfat", "-C", *fat, "-n", ESP_LABEL, out, str(config.efi_mib * 1024)],
        timeout=120)
    vmlinuz, initrd = kernel_files(boot)
    loader = work / "esp-files"
    (loader / "entries").mkdir(parents=True, exist_ok=True)
    (loader / "loader.conf").write_text("default anklume-1-toram.conf\ntimeout 3\n"
                                        "editor no\n")
    for name, (title, options) in ENTRIES.items():
        (loader / "entries" / f"{name}.conf").write_text(
            loader_entry(title, options, persist_partuuid, config.version))
    systemd_boot = boot / "efi" / f"systemd-boot{config.arch_efi}.efi"
    if not systemd_boot.exists():
        raise BuildError(f"the image has no {systemd_boot.name} (systemd-boot-efi)")
    mtools = ["-i", str(out)]
    run(["mmd", *mtools, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries",
         "::/anklume"], timeout=60)
    copies = [
        (systemd_boot, f"::/EFI/BOOT/BOOT{config.arch_efi.upper()}.EFI"),
        (vmlinuz, "::/anklume/vmlinuz"), (initrd, "::/anklume/initrd.img"),
        (loader / "loader.conf", "::/loader/loader.conf"),
    ]
    copies += [(p, f"::/loader/entries/{p.name}") for p in sorted((loader / "entries").iterdir())]
    for src, dst in copies:
        run(["mcopy", *mtools, "-o", src, dst], timeout=120)
    return out
