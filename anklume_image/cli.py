"""``anklume-image build``: the seed's OUT / BASE / ARCH / DESKTOP as options.

  anklume-image build --out anklume-live.img [--base debian|arch] [--suite trixie]
      [--arch amd64] [--desktop minimal|sway|labwc|kde|all] [--no-zfs]
      [--signing-key KEY.pem] [--secure-boot-key DB.key --secure-boot-cert DB.crt]
      [--version V]

SOURCE_DATE_EPOCH, when set (reproducible-builds.org), dates what the build
writes: the files of the slot, PERSIST's first state and the Secure Boot
signatures; the same inputs and keys then give the same squashfs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from anklume_image.build import build
from anklume_image.config import Base, BuildConfig, Desktop
from anklume_image.errors import BuildError
from anklumed.errors import AnklumeError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anklume-image", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the stick image (and the bundle of its version)")
    b.add_argument("--out", type=Path, required=True, help="the image file to write")
    b.add_argument("--base", choices=[x.value for x in Base], default=Base.DEBIAN.value)
    b.add_argument("--suite", help="Debian suite (default trixie, Debian 13; "
                                   "--base debian only: Arch is rolling)")
    b.add_argument("--arch", default="amd64")
    b.add_argument("--desktop", choices=[x.value for x in Desktop],
                   default=Desktop.MINIMAL.value)
    b.add_argument("--version", default="0.1.0", help="the OS version the slot carries")
    b.add_argument("--no-zfs", action="store_true",
                   help="leave ZFS out (no zfs-dkms build: minutes faster; BTRFS only)")
    b.add_argument("--signing-key", type=Path, metavar="KEY",
                   help="Ed25519 key (anklume-bundle keygen) that signs the slot manifest")
    b.add_argument("--secure-boot-key", type=Path, metavar="KEY",
                   help="RSA key (PEM) that signs systemd-boot and the UKI for Secure Boot "
                        "(needs --signing-key and --secure-boot-cert)")
    b.add_argument("--secure-boot-cert", type=Path, metavar="CERT",
                   help="the certificate of --secure-boot-key, as enrolled in the firmware's db")
    b.add_argument("--mirror", help="Debian mirror (default: the one this host's apt uses); "
                                    "with --base arch, an Arch mirror (default: "
                                    "geo.mirror.pkgbuild.com)")
    b.add_argument("--efi-size", type=int, default=None, metavar="MIB")
    b.add_argument("--slot-size", type=int, default=None, metavar="MIB")
    b.add_argument("--persist-size", type=int, default=None, metavar="MIB")
    b.add_argument("--compression-level", type=int, default=None, metavar="N")
    b.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from(args: argparse.Namespace) -> BuildConfig:
    if args.base == Base.ARCH.value and args.suite is not None:
        raise BuildError("--suite names a Debian release and Arch Linux is rolling: "
                         "leave --suite out with --base arch")
    options = {
        "out": args.out, "base": args.base, "suite": args.suite, "arch": args.arch,
        "desktop": args.desktop, "version": args.version, "zfs": not args.no_zfs,
        "signing_key": args.signing_key, "mirror": args.mirror,
        "secure_boot_key": args.secure_boot_key, "secure_boot_cert": args.secure_boot_cert,
        "efi_mib": args.efi_size, "slot_mib": args.slot_size,
        "persist_mib": args.persist_size, "compression_level": args.compression_level,
    }
    options["source_date_epoch"] = source_date_epoch(os.environ.get("SOURCE_DATE_EPOCH"))
    return BuildConfig(**{k: v for k, v in options.items() if v is not None})


def source_date_epoch(value: str | None) -> int | None:
    """The environment's SOURCE_DATE_EPOCH: seconds since 1970, or unset."""
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds since "
                         "1970-01-01 UTC (reproducible-builds.org/specs/source-date-epoch)")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="anklume-image: %(message)s")
    try:
        config = config_from(args)
        out = build(config)
    except ValidationError as e:
        first = e.errors()[0]
        print(f"anklume-image: --{first['loc'][0]}: {first['msg']}", file=sys.stderr)
        return 2
    except (BuildError, AnklumeError, OSError) as e:
        print(f"anklume-image: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("anklume-image: interrupted; the next build starts clean", file=sys.stderr)
        return 130
    print(f"{out} ({out.stat().st_size // 2**20} MiB) and {out.name}.sha256 written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
