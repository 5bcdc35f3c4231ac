"""``anklume-bundle``: make and check slot bundles (for the image builder).

  anklume-bundle keygen builder.pem        # builder.pem (private, 0600) + builder.pub.pem
  anklume-bundle create os.squashfs --version 1.2.0 [--compatible C] [--sign builder.pem]
      [--uki uki.efi]   # a copy of the image's /usr/lib/anklume/boot/uki.efi: pinned for the ESP
  anklume-bundle verify anklume-C-1.2.0.manifest [--keys /etc/anklume/keys.d]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anklumed.errors import AnklumeError
from anklumed.slots import bundle
from anklumed.slots.boot_entries import UKI_IN_IMAGE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="anklume-bundle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="make an Ed25519 signing key pair")
    keygen.add_argument("key", type=Path)
    create = sub.add_parser("create", help="hash a squashfs and write its bundle")
    create.add_argument("image", type=Path)
    create.add_argument("--version", required=True)
    create.add_argument("--compatible", default=bundle.COMPATIBLE)
    create.add_argument("--sign", type=Path, metavar="KEY", help="Ed25519 private key (PEM)")
    create.add_argument("--out", type=Path, default=Path())
    create.add_argument("--build-id")
    create.add_argument("--uki", type=Path, metavar="FILE",
                        help=f"a copy of the slot's kernel, /{UKI_IN_IMAGE} in the image: "
                             "the manifest pins it, the updater puts it on the ESP")
    verify = sub.add_parser("verify", help="check a manifest (and its signature)")
    verify.add_argument("manifest", type=Path)
    verify.add_argument("--keys", type=Path, default=bundle.KEYS_DIR)
    args = p.parse_args(argv)
    try:
        if args.command == "keygen":
            print(f"public key: {bundle.generate_key(args.key)} (install it in keys.d)")
        elif args.command == "create":
            m = bundle.create_bundle(args.image, args.out, version=args.version,
                                     compatible=args.compatible, signing_key=args.sign,
                                     build_id=args.build_id,
                                     uki=(UKI_IN_IMAGE, args.uki) if args.uki else None)
            print(f"{args.out / m.image}: {m.size} bytes, root hash {m.root_hash}")
        else:
            data = args.manifest.read_bytes()
            m = bundle.parse_manifest(data)
            sig = args.manifest.with_name(args.manifest.name + ".sig")
            signer = (bundle.check_signature(data, sig.read_bytes(),
                                             bundle.load_trusted_keys(args.keys))
                      if sig.exists() else None)
            print(f"{m.compatible} {m.version}: root hash {m.root_hash}, "
                  + (f"signed by {signer}" if signer else "unsigned"))
    except (AnklumeError, OSError, ValueError) as e:
        print(f"anklume-bundle: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
