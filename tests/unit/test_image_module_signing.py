"""DKMS's modules signed with the Secure Boot key (anklume_image/module_signing.py):
the build's own hook string, run by sh on a directory standing for the
image's root, with a ``chroot`` that runs its command on that directory
instead (no mmdebstrap, no root), and this host's kernel ``sign-file``
standing for the image's (linux-kbuild: the same program)."""

from __future__ import annotations

import base64
import gzip
import lzma
import os
import subprocess
from pathlib import Path

import pytest

from anklume_image import module_signing, rootfs
from anklume_image.config import BuildConfig

KERNEL = "6.12.117+deb13-amd64"
DKMS_COPIES = f"var/lib/dkms/zfs/2.3.9/{KERNEL}/x86_64/module"
INSTALLED = f"usr/lib/modules/{KERNEL}/updates/dkms"
IN_TREE = f"usr/lib/modules/{KERNEL}/kernel/fs/ext4/ext4.ko.xz"  # Debian signed it
HOST_SIGN_FILES = sorted(Path("/usr/lib").glob("linux-kbuild-*/scripts/sign-file"))
# The chroot the hook calls: its command run on the root given, and a mark
# that it was called (the hook must not run the script on the host's /).
FAKE_CHROOT = """#!/bin/sh
[ "$2 $3" = "sh -c" ] && [ "$6" = "" ] || { echo "unexpected chroot $*" >&2; exit 99; }
echo "$1" >> "$(dirname "$0")/chroot-called"
exec sh -c "$4" "$5" "$1"
"""
# sign-file's struct module_signature, before the magic: 8 bytes, then the
# signature's length (big-endian).
SIGNATURE_INFO = 12

pytestmark = pytest.mark.skipif(not HOST_SIGN_FILES,
                                reason="the kernel's sign-file is not installed "
                                       "(apt-get install linux-headers-amd64)")


def make_keys(where: Path) -> tuple[Path, Path]:
    key, cert = where / "db.key", where / "db.crt"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "1", "-subj", "/CN=anklume unit test db/", "-keyout", key,
                    "-out", cert], check=True, capture_output=True)
    return key, cert


def compressed(data: bytes, suffix: str) -> bytes:
    if suffix == ".ko.xz":
        return lzma.compress(data, check=lzma.CHECK_CRC32)
    if suffix == ".ko.gz":
        return gzip.compress(data, mtime=0)
    if suffix == ".ko.zst":
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                              check=True).stdout
    return data


def decompressed(path: Path) -> bytes:
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-q", "-d", "-c", path], capture_output=True,
                              check=True).stdout
    return path.read_bytes()


def module_bytes(name: str) -> bytes:
    return b"\x7fELF" + f" a module named {name} ".encode() * 500


def image_root(tmp_path: Path, suffix: str = ".ko.xz",
               sign_file: Path = HOST_SIGN_FILES[-1] if HOST_SIGN_FILES else Path()) -> Path:
    """What zfs-dkms leaves: spl and zfs installed and in DKMS's tree, a
    module of the kernel's own, and the kernel's build link to sign-file."""
    root = tmp_path / "root"
    for directory in (INSTALLED, DKMS_COPIES):
        (root / directory).mkdir(parents=True)
        for name in ("spl", "zfs"):
            module = root / directory / f"{name}{suffix}"
            module.write_bytes(compressed(module_bytes(name), suffix))
            os.utime(module, (1_700_000_000, 1_700_000_000))
    (root / IN_TREE).parent.mkdir(parents=True)
    (root / IN_TREE).write_bytes(compressed(module_bytes("ext4"), ".ko.xz"))
    scripts = root / "usr" / "lib" / "modules" / KERNEL / "build" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "sign-file").symlink_to(sign_file)
    return root


def config(tmp_path: Path, key: Path | None, cert: Path | None,
           with_zfs: bool = True) -> BuildConfig:
    return BuildConfig(out=tmp_path / "x.img", zfs=with_zfs, cache_dir=tmp_path / "cache",
                       mirror="http://mirror.example/debian", secure_boot_key=key,
                       secure_boot_cert=cert)


def run_hook(tmp_path: Path, root: Path, key: Path, cert: Path
             ) -> subprocess.CompletedProcess[str]:
    """The build's hook as mmdebstrap runs it ("$1" the root), the fake chroot first on PATH."""
    fake = root.parent / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "chroot").write_text(FAKE_CHROOT)
    (fake / "chroot").chmod(0o755)
    [hook] = module_signing.customize_hooks(config(tmp_path, key, cert))
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", "-c", hook, "exec", str(root)], env=env, capture_output=True,
                          text=True)
    assert (fake / "chroot-called").read_text() == f"{root}\n", proc.stderr
    return proc


def split_signature(signed: bytes) -> tuple[bytes, bytes]:
    """The module as it was, and the PKCS#7 signature sign-file appended."""
    magic = module_signing.SIGNATURE_MAGIC
    assert signed.endswith(magic)
    info = signed[-len(magic) - SIGNATURE_INFO:-len(magic)]
    length = int.from_bytes(info[8:], "big")
    end = len(signed) - len(magic) - SIGNATURE_INFO
    return signed[:end - length], signed[end - length:end]


def assert_signed_by(signed: bytes, cert: Path, original: bytes, where: Path) -> None:
    body, signature = split_signature(signed)
    assert body == original
    (where / "sig.der").write_bytes(signature)
    (where / "body").write_bytes(body)
    # Only the certificate given may be the signer (-nointern); its chain is
    # not the question (-noverify): the kernel trusts db's certificate as is.
    subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER",
                    "-in", where / "sig.der", "-content", where / "body",
                    "-certfile", cert, "-nointern", "-noverify", "-out", "/dev/null"],
                   check=True, capture_output=True)


def key_material(key: Path) -> list[bytes]:
    """What would betray the private key in a file: its PEM lines and its DER."""
    pem = key.read_bytes()
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    return [*lines, base64.b64decode(b"".join(lines))]


def files_holding(root: Path, needles: list[bytes]) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                found.append(path)
    return found


@pytest.mark.parametrize("suffix", [".ko.xz", ".ko.zst", ".ko.gz", ".ko"])
def test_every_dkms_module_is_signed_with_the_secure_boot_key(tmp_path: Path,
                                                              suffix: str) -> None:
    key, cert = make_keys(tmp_path)
    root = image_root(tmp_path, suffix)
    in_tree = (root / IN_TREE).read_bytes()
    proc = run_hook(tmp_path, root, key, cert)
    assert proc.returncode == 0, proc.stderr
    assert "4 DKMS modules signed" in proc.stdout
    for directory in (INSTALLED, DKMS_COPIES):
        # the same names (depmod's files name them), no uncompressed copy left
        assert sorted(p.name for p in (root / directory).iterdir()) == \
            [f"spl{suffix}", f"zfs{suffix}"]
        for name in ("spl", "zfs"):
            module = root / directory / f"{name}{suffix}"
            assert_signed_by(decompressed(module), cert, module_bytes(name), tmp_path)
            assert module.stat().st_mtime == 1_700_000_000
    assert (root / IN_TREE).read_bytes() == in_tree  # the kernel's own: Debian signed it


def test_a_signed_module_is_compressed_as_dkms_compresses(tmp_path: Path) -> None:
    """xz with a CRC32 check (the kernel's decompressor wants it, not CRC64)."""
    key, cert = make_keys(tmp_path)
    root = image_root(tmp_path)
    assert run_hook(tmp_path, root, key, cert).returncode == 0
    header = (root / INSTALLED / "zfs.ko.xz").read_bytes()[:12]
    assert header[:6] == b"\xfd7zXZ\x00" and header[6:8] == b"\x00\x01", header  # CRC32


def test_the_same_module_and_key_give_the_same_bytes(tmp_path: Path) -> None:
    key, cert = make_keys(tmp_path)
    signed = []
    for run in ("one", "two"):
        root = image_root(tmp_path / run)
        assert run_hook(tmp_path, root, key, cert).returncode == 0
        signed.append((root / INSTALLED / "zfs.ko.xz").read_bytes())
    assert signed[0] == signed[1]


def test_the_private_key_is_written_nowhere_in_the_tree(tmp_path: Path) -> None:
    key, cert = make_keys(tmp_path)
    root = image_root(tmp_path)
    proc = run_hook(tmp_path, root, key, cert)
    assert proc.returncode == 0, proc.stderr
    assert files_holding(root, [*key_material(key), str(key).encode()]) == []
    # nor in what the build logs (mmdebstrap's output goes to rootfs.log)
    assert not any(line.decode() in proc.stdout + proc.stderr for line in key_material(key)[:-1])


def test_the_key_reaches_sign_file_as_a_descriptor_not_as_its_content(tmp_path: Path) -> None:
    """sign-file's argv: a descriptor's path for the key, never the key."""
    key, cert = make_keys(tmp_path)
    record = tmp_path / "argv"
    spy = tmp_path / "sign-file-spy"
    spy.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexec {HOST_SIGN_FILES[-1]} "$@"\n')
    spy.chmod(0o755)
    root = image_root(tmp_path, sign_file=spy)
    assert run_hook(tmp_path, root, key, cert).returncode == 0
    calls = record.read_text().splitlines()
    assert len(calls) == 4
    assert all(call.startswith(f"sha256 /proc/self/fd/{module_signing.KEY_FD} "
                               f"/proc/self/fd/{module_signing.CERT_FD} ") for call in calls)


def test_a_signing_that_fails_midway_fails_the_build_and_leaves_no_key(tmp_path: Path) -> None:
    key, cert = make_keys(tmp_path)
    failing = tmp_path / "sign-file-fails-on-zfs"
    failing.write_text('#!/bin/sh\ncase "$4" in */zfs.ko.*) exit 1;; esac\n'
                       f'exec {HOST_SIGN_FILES[-1]} "$@"\n')
    failing.chmod(0o755)
    root = image_root(tmp_path, sign_file=failing)
    proc = run_hook(tmp_path, root, key, cert)
    assert proc.returncode != 0
    assert "sign-file could not sign" in proc.stderr and "zfs.ko.xz" in proc.stderr
    assert files_holding(root, key_material(key)) == []


def test_a_module_signed_already_is_refused(tmp_path: Path) -> None:
    """Two signatures would be one signed over the other: DKMS must sign nothing."""
    key, cert = make_keys(tmp_path)
    root = image_root(tmp_path, ".ko")
    subprocess.run([HOST_SIGN_FILES[-1], "sha256", key, cert, root / INSTALLED / "spl.ko"],
                   check=True)
    proc = run_hook(tmp_path, root, key, cert)
    assert proc.returncode != 0
    assert "is signed already" in proc.stderr


def test_a_zfs_tree_without_dkms_modules_fails_the_build(tmp_path: Path) -> None:
    key, cert = make_keys(tmp_path)
    root = image_root(tmp_path)
    for directory in (INSTALLED, DKMS_COPIES):
        for module in (root / directory).iterdir():
            module.unlink()
    proc = run_hook(tmp_path, root, key, cert)
    assert proc.returncode != 0
    assert "no DKMS module to sign" in proc.stderr


@pytest.mark.parametrize(("with_zfs", "with_key"), [(True, True), (True, False), (False, True)])
def test_mmdebstrap_signs_modules_before_the_initramfs_only_with_zfs_and_a_key(
        tmp_path: Path, with_zfs: bool, with_key: bool) -> None:
    key, cert = make_keys(tmp_path)
    built = config(tmp_path, key if with_key else None, cert if with_key else None, with_zfs)
    argv = rootfs.mmdebstrap_argv(built, tmp_path / "work", Path(__file__).parents[2])
    hooks = [a.removeprefix("--customize-hook=") for a in argv
             if a.startswith("--customize-hook=")]
    signing = [i for i, h in enumerate(hooks) if "sign-dkms-modules" in h]
    assert bool(signing) == (with_zfs and with_key)
    if signing:
        initramfs = [i for i, h in enumerate(hooks) if "update-initramfs" in h]
        assert signing[0] < initramfs[0]
        assert f"3<{key}" in hooks[signing[0]] and f"4<{cert}" in hooks[signing[0]]
    assert not any(line.decode() in arg for arg in argv for line in key_material(key)[:-1])
