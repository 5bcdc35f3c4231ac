"""A new slot's kernel against the running one's Secure Boot signer and the
firmware's db (anklumed/slots/kernel_signer.py).

The kernels are tiny PE files (devtools/tiny_pe.py) signed by the real
sbsign; the db is an efivarfs file laid out as the UEFI specification says
(the image tier reads a real firmware's db with the same code:
tests/image/test_secure_boot.py).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from anklumed.errors import VerificationFailed
from anklumed.slots import kernel_signer as ks
from devtools.tiny_pe import tiny_pe

ATTRIBUTES = struct.pack("<I", 0x27)  # non-volatile, boot and runtime access, time-based
SHA256_LIST = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
OWNER = uuid.UUID("11111111-2222-3333-4444-555555555555")


def make_pair(tmp_path: Path, name: str, issuer: tuple[Path, Path] | None = None
              ) -> tuple[Path, Path]:
    """An RSA key and its certificate, self-signed or issued by ``issuer``."""
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    if issuer is None:
        argv: list[str | Path] = ["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048",
                                  "-nodes", "-days", "30", "-subj", f"/CN={name}/",
                                  "-keyout", key, "-out", cert]
        subprocess.run(argv, check=True, capture_output=True)
        return key, cert
    csr = tmp_path / f"{name}.csr"
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj",
                    f"/CN={name}/", "-keyout", key, "-out", csr], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", issuer[1], "-CAkey", issuer[0],
                    "-CAcreateserial", "-days", "30", "-out", cert], check=True,
                   capture_output=True)
    return key, cert


Pair = tuple[Path, Path]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """Made once: RSA key generation is most of these tests' time."""
    folder = tmp_path_factory.mktemp("keys")
    made = {name: make_pair(folder, name) for name in ("stick", "other", "authority")}
    made["issued"] = make_pair(folder, "release 2027", issuer=made["authority"])
    return made


def signed_pe(tmp_path: Path, pair: Pair | None, name: str = "uki.efi") -> Path:
    unsigned = tmp_path / f"unsigned-{name}"
    unsigned.write_bytes(tiny_pe())
    if pair is None:
        return unsigned
    if shutil.which("sbsign") is None:
        pytest.skip("sbsign (Debian's sbsigntool, installed by ./setup-dev --tests) is missing")
    out = tmp_path / name
    subprocess.run(["sbsign", "--key", pair[0], "--cert", pair[1], "--output", out, unsigned],
                   check=True, capture_output=True)
    return out


def cert_of(pair: Pair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair[1].read_bytes())


def efivars(tmp_path: Path, secure_boot: bool, db: list[x509.Certificate]) -> Path:
    """An efivarfs-like folder: SecureBoot, and a db of a SHA-256 list then one
    X.509 list per certificate (each entry: owner GUID, then the DER)."""
    folder = tmp_path / "efivars"
    folder.mkdir()
    (folder / ks.SECURE_BOOT_VAR).write_bytes(ATTRIBUTES + bytes([int(secure_boot)]))
    lists = esl(SHA256_LIST, [OWNER.bytes_le + bytes(32)] * 2)
    for cert in db:
        lists += esl(ks.EFI_CERT_X509, [OWNER.bytes_le + cert.public_bytes(Encoding.DER)])
    (folder / ks.DB_VAR).write_bytes(ATTRIBUTES + lists)
    return folder


def esl(kind: uuid.UUID, entries: list[bytes]) -> bytes:
    size = len(entries[0])
    return kind.bytes_le + struct.pack("<III", 28 + size * len(entries), 0, size) + \
        b"".join(entries)


def test_an_unsigned_pe_has_no_signer_and_a_signed_one_its_certificate(
        tmp_path: Path, keys: dict[str, Pair]) -> None:
    pair = keys["stick"]
    assert ks.file_signers(signed_pe(tmp_path, None)) == []
    assert ks.file_signers(signed_pe(tmp_path, pair)) == [cert_of(pair)]
    assert ks.file_signers(tmp_path / "no such uki.efi") == []


def test_what_is_not_a_pe_is_said(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a PE file"):
        ks.certificate_table(b"MZ" + bytes(100))
    with pytest.raises(ValueError, match="not a PE file"):
        ks.certificate_table(b"\x7fELF" + bytes(4092))


def test_the_slots_uki_is_read_out_of_its_squashfs(tmp_path: Path,
                                                    keys: dict[str, Pair]) -> None:
    pair = keys["stick"]
    tree = tmp_path / "tree" / "usr" / "lib"
    tree.mkdir(parents=True)
    shutil.copy(signed_pe(tmp_path, pair), tree / "uki.efi")
    (tree / "garbage.efi").write_bytes(b"not a kernel" * 100)
    image = tmp_path / "slot.squashfs"
    subprocess.run(["mksquashfs", tmp_path / "tree", image, "-quiet", "-no-progress"],
                   check=True)
    assert ks.slot_signers(image, "usr/lib/uki.efi") == [cert_of(pair)]
    with pytest.raises(VerificationFailed, match="is not a PE file"):
        ks.slot_signers(image, "usr/lib/garbage.efi")


def test_the_db_certificates_are_read_past_other_lists(tmp_path: Path,
                                                        keys: dict[str, Pair]) -> None:
    first, second = keys["stick"], keys["other"]
    folder = efivars(tmp_path, True, [cert_of(first), cert_of(second)])
    assert ks.secure_boot_on(folder)
    assert ks.db_certificates(folder) == [cert_of(first), cert_of(second)]
    (folder / ks.SECURE_BOOT_VAR).write_bytes(ATTRIBUTES + b"\x00")
    assert not ks.secure_boot_on(folder)
    assert not ks.secure_boot_on(tmp_path / "no firmware")
    assert ks.db_certificates(tmp_path / "no firmware") == []


def test_the_rule(keys: dict[str, Pair]) -> None:
    stick, other = cert_of(keys["stick"]), cert_of(keys["other"])
    ks.check([stick], [stick], secure_boot=False, db=[])  # same key
    ks.check([stick], [stick], secure_boot=True, db=[])  # same key, db unreadable
    ks.check([other], [stick], secure_boot=True, db=[stick, other])  # rotation, enrolled
    ks.check([], [], secure_boot=False, db=[])  # never signed, no Secure Boot
    ks.check([stick], [], secure_boot=False, db=[])  # signing starts
    with pytest.raises(VerificationFailed, match="not signed for Secure Boot: this stick's "
                       "kernel is signed by CN=stick"):
        ks.check([], [stick], secure_boot=False, db=[])
    with pytest.raises(VerificationFailed, match="signed by CN=other: this machine starts "
                       "with Secure Boot on"):
        ks.check([other], [stick], secure_boot=True, db=[stick])
    with pytest.raises(VerificationFailed, match="not signed for Secure Boot: this machine"):
        ks.check([], [], secure_boot=True, db=[stick])


def test_a_key_issued_by_an_enrolled_authority_is_trusted(keys: dict[str, Pair]) -> None:
    issued = cert_of(keys["issued"])
    ks.check([issued], [], secure_boot=True, db=[cert_of(keys["authority"])])
    with pytest.raises(VerificationFailed):
        ks.check([issued], [], secure_boot=True, db=[cert_of(keys["other"])])
