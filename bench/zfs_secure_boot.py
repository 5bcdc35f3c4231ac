"""Does Debian's kernel, under Secure Boot, load a zfs module signed with the
key the firmware's db holds? A measurement, not a test (docs/boot-chain.md,
"The ZFS module is signed with the Secure Boot key"). Measured on
2026-12-04 before the build signed the modules (module_signing.py): on an
image built since, "as built" below is the build's signed module, and the
ZFS image tier's own Secure Boot boots are the test.

The ZFS image tier's image (tests/image/test_zfs_image.py: built with ZFS
and signed for Secure Boot with a test key, kept with ANKLUME_IMAGE_REUSE=1)
is booted under the OVMF build that enforces Secure Boot, its test
certificate enrolled as PK, KEK and db (test_secure_boot.py's store). In the
guest: the lockdown state, the kernel's module-signing configuration, what
became of the boot's own ``modprobe zfs`` (the image's modules, then unsigned),
then spl and zfs signed with the db key by the kernel's own ``sign-file``
(linux-headers is in a ZFS image, for DKMS) and loaded with insmod; the
keyrings (/proc/keys) and the kernel's lines about keys and modules. The
key comes in as a test credential: the image is not modified.

    flock /tmp/anklume-heavy.lock .venv/bin/python -m bench.zfs_secure_boot

prints the guest's answers; the run directory keeps the console and report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from devtools.image_vm import Machine
from tests.image.test_boot_image import BOOT_WAIT, DATA_MIB, STICK_ENTRY_A
from tests.image.test_secure_boot import enrolled_vars
from tests.image.test_zfs_image import WORK

RUNDIR = Path("/var/tmp/anklume-zfs-secure-boot")

PROBE = r"""
set -u
k=$(uname -r)
key=$CREDENTIALS_DIRECTORY/anklume-test.db.key
cert=$CREDENTIALS_DIRECTORY/anklume-test.db.crt
echo "== lockdown: $(cat /sys/kernel/security/lockdown)"
echo "== kernel config"
grep -E 'MODULE_SIG|INTEGRITY_(PLATFORM|MACHINE)_KEYRING|LOAD_UEFI_KEYS' "/boot/config-$k"
grep -E 'SECONDARY_TRUSTED|LOCK_DOWN' "/boot/config-$k"
echo "== systemd-modules-load: $(systemctl show -p Result --value systemd-modules-load.service)"
echo "== modprobe zfs, as built"
modprobe zfs; echo "rc=$?"
work=$(mktemp -d)
sign=$(ls /usr/lib/linux-kbuild-*/scripts/sign-file "/usr/src/linux-headers-$k/scripts/sign-file" \
    2>/dev/null | head -n 1)
echo "== sign-file: $sign"
for m in spl zfs; do
    src=$(find "/usr/lib/modules/$k" -name "$m.ko*" | head -n 1)
    python3 -c 'import lzma, sys; open(sys.argv[2], "wb").write(lzma.open(sys.argv[1]).read())' \
        "$src" "$work/$m.ko"
    "$sign" sha256 "$key" "$cert" "$work/$m.ko"; echo "signed $m ($src): rc=$?"
    tail -c 28 "$work/$m.ko" | od -c | head -n 2
done
echo "== insmod spl, signed with the db key"
insmod "$work/spl.ko"; echo "rc=$?"
echo "== insmod zfs, signed with the db key"
insmod "$work/zfs.ko"; echo "rc=$?"
echo "== /sys/module/zfs: $(cat /sys/module/zfs/version 2>&1)"
echo "== /proc/keys"
cat /proc/keys
echo "== kernel log"
dmesg | grep -iE 'zfs|spl|lockdown|module|platform|x509|secure ?boot|integrity|keyring|cert'
"""


def main() -> int:
    image = WORK / "anklume-live.img"
    shutil.rmtree(RUNDIR, ignore_errors=True)
    RUNDIR.mkdir(parents=True)
    machine = Machine(image, RUNDIR / "machine", data_mib=DATA_MIB, secure_boot=True,
                      vars_template=enrolled_vars(WORK / "db.crt", RUNDIR / "OVMF_VARS.fd"))
    machine.choose_entry_once(STICK_ENTRY_A)
    boot = machine.boot(
        credentials={"anklume-test.db.key": (WORK / "db.key").read_bytes(),
                     "anklume-test.db.crt": (WORK / "db.crt").read_bytes()},
        commands={"probe": ["sh", "-c", PROBE],
                  "secure_boot": ["od", "-An", "-tu1", "/sys/firmware/efi/efivars/"
                                  "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"]},
        wait=BOOT_WAIT, timeout=BOOT_WAIT * 3, cut_after_report=True)
    if boot.report is None:
        print(boot.explain())
        return 1
    for name, result in boot.report["commands"].items():
        print(f"### {name}: rc {result['rc']}\n{result['stdout']}{result['stderr']}")
    print(json.dumps({"failed": boot.report["failed"], "seconds": round(boot.seconds)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
