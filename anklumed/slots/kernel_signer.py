"""Whether a new slot's kernel (its UKI) will start under Secure Boot.

The firmware checks a UKI's Authenticode signature against its ``db`` when
Secure Boot is on, and a UKI it refuses costs a boot attempt each time, until
boot counting gives up on the slot (docs/boot-chain.md, the failure table).
The signed manifest already pins the UKI's bytes, so who *made* the bundle is
settled; what is checked here is who *signed its kernel for the firmware*,
before the kernel goes to the ESP, so a bundle built without
``--secure-boot-key`` (or with another key) is refused with a sentence rather
than installed and then refused by the firmware three times.

The rule (``check``):
- a new kernel signed by a certificate that signed the running kernel is
  accepted: same key, same machines;
- with Secure Boot on, one signed by a certificate in this machine's ``db``
  (or issued by one) is accepted too: a key rotation the owner enrolled;
- otherwise, if the running kernel is signed or Secure Boot is on, the update
  is refused: the stick would stop starting on the machines it starts on now;
- a stick that was never signed, on a machine without Secure Boot, takes
  unsigned kernels as before.

This predicts the firmware; it does not replace it. The certificates are
compared, the signature itself is not verified (the firmware does that, and
the manifest's sha256 already vouches for the bytes); ``dbx`` is not read.
"""

from __future__ import annotations

import contextlib
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from anklumed.command import CommandError, run
from anklumed.errors import Failed, VerificationFailed
from anklumed.slots.boot_entries import UKI_IN_IMAGE

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported where a certificate is read, not here: the daemon
# imports this module at start (anklumed.config's defaults) and cryptography
# would be a third of its imports, for a check that runs only in an update.

EFIVARS = Path("/sys/firmware/efi/efivars")
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
DB_VAR = "db-d719b2cb-3d3a-4596-a3bc-dad00e67656f"
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
HEADER_BYTES = 4096  # the DOS, COFF and optional headers of any UKI fit
SECURITY_DIRECTORY = 4  # the certificate table's index among the data directories
READ_TIMEOUT = 600.0
# Where the data directories start in the optional header, PE32 and PE32+.
_DIRECTORIES = {0x10B: 96, 0x20B: 112}

Signers: TypeAlias = "list[x509.Certificate]"


@dataclass(frozen=True)
class Machine:
    """What the check reads of the running system (configurable for the
    simulation: anklumed.config)."""

    efivars: Path = EFIVARS
    running_uki: Path = Path("/") / UKI_IN_IMAGE  # the booted slot's own


def certificate_table(header: bytes) -> tuple[int, int]:
    """(file offset, size) of a PE's certificate table; (0, 0) when unsigned.
    ValueError when ``header`` does not start a PE file."""
    try:
        pe = struct.unpack_from("<I", header, 0x3C)[0]
        optional = pe + 24
        magic = struct.unpack_from("<H", header, optional)[0]
        if header[:2] != b"MZ" or header[pe:pe + 4] != b"PE\0\0" or magic not in _DIRECTORIES:
            raise ValueError("not a PE file")
        table: tuple[int, int] = struct.unpack_from(
            "<II", header, optional + _DIRECTORIES[magic] + 8 * SECURITY_DIRECTORY)
        return table
    except struct.error:
        raise ValueError("not a PE file") from None


def signer_certificates(table: bytes) -> Signers:
    """The certificates of each PKCS#7 signature in a PE certificate table
    (WIN_CERTIFICATE entries, each padded to 8 bytes)."""
    from cryptography.hazmat.primitives.serialization import pkcs7

    found: Signers = []
    at = 0
    while at + 8 <= len(table):
        length, _revision, kind = struct.unpack_from("<IHH", table, at)
        if length < 8 or at + length > len(table):
            break
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            # (a signature that does not parse is one the firmware cannot read either)
            with contextlib.suppress(ValueError):
                found += pkcs7.load_der_pkcs7_certificates(table[at + 8:at + length])
        at += (length + 7) // 8 * 8
    return found


def file_signers(path: Path) -> Signers:
    """The running kernel's signers; none when there is no such file (a
    system not started from an anklume UKI, such as the simulation)."""
    try:
        with path.open("rb") as f:
            offset, size = certificate_table(f.read(HEADER_BYTES))
            f.seek(offset)
            return signer_certificates(f.read(size)) if size else []
    except (FileNotFoundError, ValueError):
        return []


def slot_signers(device: Path, uki: str) -> Signers:
    """The signers of the UKI inside a slot's squashfs, read through pipes
    (a UKI is tens of MiB; only its headers and its table are kept)."""
    def read(script: str) -> bytes:
        try:
            return run(["sh", "-c", script, device, uki], timeout=READ_TIMEOUT).stdout
        except CommandError as e:
            raise Failed(f"cannot read the new slot's kernel: {e}") from None

    try:
        offset, size = certificate_table(
            read(f'unsquashfs -cat "$0" "$1" | head -c {HEADER_BYTES}'))
    except ValueError:
        raise VerificationFailed("the bundle's kernel (UKI) is not a PE file") from None
    if not size:
        return []
    return signer_certificates(
        read(f'unsquashfs -cat "$0" "$1" | tail -c +{offset + 1} | head -c {size}'))


def secure_boot_on(efivars: Path) -> bool:
    """The firmware's SecureBoot variable: 4 attribute bytes, then 1 when on."""
    try:
        return (efivars / SECURE_BOOT_VAR).read_bytes()[4:5] == b"\x01"
    except OSError:
        return False


def db_certificates(efivars: Path) -> Signers:
    """The X.509 certificates of the firmware's db (EFI_SIGNATURE_LISTs after
    the variable's 4 attribute bytes); hashes and unreadable entries skipped."""
    try:
        data = (efivars / DB_VAR).read_bytes()[4:]
    except OSError:
        return []
    from cryptography import x509

    found: Signers = []
    at = 0
    while at + 28 <= len(data):
        kind = uuid.UUID(bytes_le=data[at:at + 16])
        list_size, header_size, entry_size = struct.unpack_from("<III", data, at + 16)
        if list_size < 28 or entry_size <= 16 or at + list_size > len(data):
            break
        if kind == EFI_CERT_X509:
            entries = at + 28 + header_size
            for entry in range(entries, at + list_size - entry_size + 1, entry_size):
                # each entry: the owner's GUID, then the certificate
                with contextlib.suppress(ValueError):
                    found.append(x509.load_der_x509_certificate(
                        data[entry + 16:entry + entry_size]))
        at += list_size
    return found


def check(new: Signers, running: Signers, secure_boot: bool, db: Signers) -> None:
    """Raise VerificationFailed when the new kernel would not start where the
    running one does (the rule in this module's docstring)."""
    if any(cert in running for cert in new):
        return
    if secure_boot and any(_trusted_by(cert, db) for cert in new):
        return
    if not running and not secure_boot:
        return
    signed = f"signed by {_names(new)}" if new else "not signed for Secure Boot"
    if secure_boot:
        reason = "this machine starts with Secure Boot on, and its firmware would refuse it"
    else:
        reason = (f"this stick's kernel is signed by {_names(running)}, so the stick "
                  "would stop starting on machines with Secure Boot on")
    raise VerificationFailed(f"the bundle's kernel (UKI) is {signed}: {reason}. Build the "
                             "bundle with the same --secure-boot-key as this stick's")


def _trusted_by(cert: x509.Certificate, db: Signers) -> bool:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    for anchor in db:
        if cert == anchor:
            return True
        try:
            cert.verify_directly_issued_by(anchor)
            return True
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
    return False


def _names(certs: Signers) -> str:
    return ", ".join(sorted({c.subject.rfc4514_string() for c in certs}))


def check_new_kernel(device: Path, uki: str, machine: Machine) -> None:
    """The updater's step: the new slot's UKI against the running system."""
    secure_boot = secure_boot_on(machine.efivars)
    db = db_certificates(machine.efivars) if secure_boot else []
    check(slot_signers(device, uki), file_signers(machine.running_uki), secure_boot, db)
