"""Fetch Debian's kernel package once and build the tiny initramfs that boots it.

Everything lands in a cache directory keyed by the kernel package's version,
so a second run costs nothing. The initramfs is busybox-static, the handful of
modules needed to reach the host's root over virtio-9p, and ``init.sh``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("ANKLUME_VM_CACHE", "/var/cache/anklume-vm"))
META_PACKAGE = "linux-image-amd64"

# Order matters: each module's dependencies come before it (no modprobe here).
INITRAMFS_MODULES = [
    "drivers/virtio/virtio_ring", "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci", "fs/netfs/netfs", "fs/fscache/fscache",
    "net/9p/9pnet", "net/9p/9pnet_virtio", "fs/9p/9p", "fs/overlayfs/overlay",
]

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Kernel:
    version: str          # e.g. 6.1.0-56-amd64
    root: Path            # the extracted package: boot/, lib/modules/<version>/
    initramfs: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: {proc.stderr.strip()[-800:]}")
    return proc.stdout


def kernel_package() -> str:
    """The versioned package the meta package depends on (linux-image-6.1.0-N-amd64)."""
    for line in _run("apt-cache", "depends", META_PACKAGE).splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"apt-cache knows no kernel behind {META_PACKAGE}")


def ensure_kernel(cache: Path = CACHE) -> Kernel:
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    root = cache / package
    if not (root / ".complete").exists():
        _extract(package, root)
    initramfs = cache / f"initramfs-{version}-{_initramfs_key()}.cpio.gz"
    if not initramfs.exists():
        _build_initramfs(root / "lib" / "modules" / version, initramfs)
    return Kernel(version=version, root=root, initramfs=initramfs)


def _extract(package: str, root: Path) -> None:
    """apt-get download + dpkg -x into a temporary directory, renamed when whole."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # apt's _apt user writes the download here
        _run("apt-get", "download", "-q", package, cwd=work)
        (deb,) = work.glob("*.deb")
        tree = work / "root"
        _run("dpkg-deb", "-x", deb, tree)
        version = package.removeprefix("linux-image-")
        _run("depmod", "-b", tree, version)
        (tree / ".complete").touch()
        shutil.rmtree(root, ignore_errors=True)
        tree.rename(root)


CONTRIB_SOURCES = Path("/etc/apt/sources.list.d/anklume-contrib.sources")
CONTRIB = """\
# Added by anklume Live's VM tier: zfs-dkms and zfsutils-linux live in contrib.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def zfs_built(kernel: Kernel) -> bool:
    return (kernel.modules / "updates" / ".zfs-complete").exists()


def ensure_zfs(kernel: Kernel) -> None:
    """Build the ZFS modules for the guest's kernel (zfs-dkms) and install zfsutils.

    The userland runs in the guest from this machine's root; the modules are
    built here against the same kernel's headers and copied into the cached
    kernel tree. About four minutes on two cores, once per kernel version.
    """
    if zfs_built(kernel) and shutil.which("zpool"):
        return
    if not CONTRIB_SOURCES.exists():
        CONTRIB_SOURCES.write_text(CONTRIB)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    f"linux-headers-{kernel.version}", "zfs-dkms", "zfsutils-linux"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    built = Path("/lib/modules") / kernel.version / "updates" / "dkms"
    if not list(built.glob("zfs.ko*")):
        # zfs-dkms's postinst builds only for kernels whose headers it saw first.
        subprocess.run(["dkms", "autoinstall", "-k", kernel.version], check=True)
    target = kernel.modules / "updates"
    target.mkdir(exist_ok=True)
    for module in built.glob("*.ko*"):
        shutil.copy2(module, target / module.name)
    _run("depmod", "-b", kernel.root, kernel.version)
    (target / ".zfs-complete").touch()


def _initramfs_key() -> str:
    """Rebuild the initramfs whenever init.sh changes."""
    return hashlib.sha256((HERE / "init.sh").read_bytes()).hexdigest()[:12]


def _build_initramfs(modules: Path, dest: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "initramfs"
        for d in ("bin", "dev", "proc", "sys", "host", "rw", "newroot", "modules"):
            (top / d).mkdir(parents=True)
        shutil.copy2(busybox, top / "bin" / "busybox")
        shutil.copy2(HERE / "init.sh", top / "init")
        (top / "init").chmod(0o755)
        order = []
        for rel in INITRAMFS_MODULES:
            name = Path(rel).name
            shutil.copy2(modules / "kernel" / f"{rel}.ko", top / "modules" / f"{name}.ko")
            order.append(name)
        (top / "modules" / "order").write_text("\n".join(order) + "\n")
        files = _run("find", ".", cwd=top)
        cpio = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=top,
                              input=files.encode(), capture_output=True, check=True).stdout
        partial = dest.with_suffix(".partial")
        partial.write_bytes(subprocess.run(["gzip", "-1"], input=cpio, capture_output=True,
                                           check=True).stdout)
        partial.rename(dest)


def main() -> None:
    """``python -m devtools.vm.kernel [--zfs]``: fetch and build what the VM tier needs."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m devtools.vm.kernel")
    parser.add_argument("--zfs", action="store_true", help="also build the ZFS modules")
    args = parser.parse_args()
    kernel = ensure_kernel()
    if args.zfs:
        ensure_zfs(kernel)
    print(f"kernel {kernel.version}: {kernel.vmlinuz}, {kernel.initramfs}"
          + (", zfs built" if zfs_built(kernel) else ""))


if __name__ == "__main__":
    main()
