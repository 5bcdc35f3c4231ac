"""Secure Boot's key and certificate, checked before any build work; the
signed UKI put in the rootfs tarball in place of the unsigned one."""

from __future__ import annotations

import datetime
import re
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from anklume_image import cli, secure_boot
from anklume_image.build import build
from anklume_image.config import BuildConfig
from anklume_image.errors import BuildError
from anklumed.slots import bundle
from devtools.tiny_pe import tiny_pe

PEM = serialization.Encoding.PEM


def write_key(path: Path, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> Path:
    path.write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def write_cert(path: Path, key: rsa.RSAPrivateKey, der: bool = False) -> Path:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anklume test db")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER if der else PEM))
    return path


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_a_matching_pair_passes_pem_or_der(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    key = write_key(tmp_path / "db.key", rsa_key)
    for der in (False, True):
        cert = write_cert(tmp_path / f"db-{der}.crt", rsa_key, der=der)
        assert secure_boot.check_pair(key, cert) == secure_boot.SigningPair(key, cert)


@pytest.mark.parametrize(("case", "message"), [
    ("garbage-key", "is not an unencrypted PEM private key"),
    ("missing-key", "cannot read the Secure Boot key"),
    ("ed25519-key", "is not an RSA key"),
    ("garbage-cert", "is not an X.509 certificate"),
    ("other-cert", "is not the one of the key"),
])
def test_a_bad_pair_is_refused_with_a_sentence(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                               case: str, message: str) -> None:
    key = write_key(tmp_path / "db.key", rsa_key)
    cert = write_cert(tmp_path / "db.crt", rsa_key)
    if case == "garbage-key":
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    elif case == "missing-key":
        key.unlink()
    elif case == "ed25519-key":
        write_key(key, ed25519.Ed25519PrivateKey.generate())
    elif case == "garbage-cert":
        cert.write_bytes(b"\x30\x03\x02\x01\x00")
    elif case == "other-cert":
        write_cert(cert, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(BuildError, match=message):
        secure_boot.check_pair(key, cert)


def test_a_bad_pair_stops_the_build_before_it_touches_anything(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    signing = tmp_path / "signing.pem"
    bundle.generate_key(signing)
    key = write_key(tmp_path / "db.key", rsa_key)
    other = write_cert(tmp_path / "other.crt",
                       rsa.generate_private_key(public_exponent=65537, key_size=2048))
    out = tmp_path / "anklume-live.img"
    # A previous build's image stays: a refused build removes nothing.
    out.write_bytes(b"previous image")
    (tmp_path / "anklume-live.img.sha256").write_text("x  anklume-live.img\n")
    config = BuildConfig(out=out, signing_key=signing, secure_boot_key=key,
                         secure_boot_cert=other)
    with pytest.raises(BuildError, match="is not the one of the key"):
        build(config)
    assert not config.work_dir.exists()
    assert out.read_bytes() == b"previous image"
    alone = config.model_copy(update={"secure_boot_cert": None})
    with pytest.raises(BuildError, match="go together"):
        build(alone)
    unsigned_slot = config.model_copy(update={"signing_key": None})
    with pytest.raises(BuildError, match="needs --signing-key"):
        build(unsigned_slot)
    assert not config.work_dir.exists()


def test_the_cli_says_what_is_wrong_with_the_key(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    signing = tmp_path / "signing.pem"
    bundle.generate_key(signing)
    (tmp_path / "db.key").write_text("not a key\n")
    (tmp_path / "db.crt").write_text("not a cert\n")
    code = cli.main(["build", "--out", str(tmp_path / "x.img"), "--signing-key", str(signing),
                     "--secure-boot-key", str(tmp_path / "db.key"),
                     "--secure-boot-cert", str(tmp_path / "db.crt")])
    assert code == 1
    err = capsys.readouterr().err
    assert "db.key is not an unencrypted PEM private key" in err
    assert "Traceback" not in err


def signing_time(efi: Path, tmp_path: Path) -> str:
    """The signingTime the signature of ``efi`` carries, as openssl prints it."""
    der = tmp_path / "signature.der"
    subprocess.run(["sbattach", "--detach", der, efi], check=True, capture_output=True)
    shown = subprocess.run(["openssl", "pkcs7", "-inform", "der", "-in", der, "-print"],
                           check=True, capture_output=True, text=True).stdout
    found = re.search(r"signingTime.*?UTCTIME:([^\n]+)", shown, re.DOTALL)
    assert found is not None, shown
    return found[1].strip()


def signed_twice(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                 when: int | None) -> tuple[bytes, bytes, Path]:
    pair = secure_boot.SigningPair(write_key(tmp_path / "db.key", rsa_key),
                                   write_cert(tmp_path / "db.crt", rsa_key))
    signed = []
    for n in (1, 2):
        efi = tmp_path / f"uki{n}.efi"
        efi.write_bytes(tiny_pe())
        if n == 2:
            time.sleep(1.1)  # signingTime counts seconds
        secure_boot.sign(pair, efi, when)
        signed.append(efi.read_bytes())
    return signed[0], signed[1], efi


def test_with_source_date_epoch_a_signature_is_dated_with_it_and_made_again_the_same(
        tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    first, again, efi = signed_twice(tmp_path, rsa_key, 1_767_225_600)  # 2026-01-01
    assert signing_time(efi, tmp_path) == "Jan  1 00:00:00 2026 GMT"
    assert first == again


def test_without_it_a_signature_is_dated_now(tmp_path: Path,
                                             rsa_key: rsa.RSAPrivateKey) -> None:
    first, again, efi = signed_twice(tmp_path, rsa_key, None)
    assert signing_time(efi, tmp_path).endswith(f"{datetime.datetime.now(datetime.UTC).year} GMT")
    assert first != again


def test_a_build_with_source_date_epoch_needs_faketime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None if name == "faketime" else name)
    with pytest.raises(BuildError, match="apt-get install faketime"):
        secure_boot.check_signing_time(1_767_225_600)
    secure_boot.check_signing_time(None)  # a build without it signs at the real time


def test_the_clock_stays_stopped_however_long_the_signing_takes() -> None:
    """A 50 MB UKI takes a while to hash: its signature must still be dated
    the second asked for, not one later."""
    argv, env = secure_boot.dated(["sh", "-c", "sleep 1.2; date -u +%s"], 1_767_225_600)
    shown = subprocess.run(argv, env={**(env or {}), "PATH": "/usr/bin:/bin"},
                           check=True, capture_output=True, text=True).stdout
    assert shown.strip() == "1767225600"
