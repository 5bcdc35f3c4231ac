#!/bin/bash
# Does sync(2) leave a just-written small file off the disk? A kernel check,
# not a test of anklumed: no daemon, no LUKS, a plain loop device.
#
#   devtools/btrfs_sync_check.sh            (here)
#   .venv/bin/python -m devtools.vm -- /work/main/devtools/btrfs_sync_check.sh
#                                           (in the guest's kernel)
#
# Each round writes a 7-byte file, calls sync(2), copies the raw device with
# O_DIRECT at once, and reads the file's inode in that copy: size 7 and one
# extent is what sync promised. Found while writing the pulled-disk test
# (tests/vm/test_data_vm.py): on Debian's 6.1 kernel, 1 round in about 190
# (on a compress=zstd mount) came back as an empty inode (size 0, no extent);
# none in 30 on 6.18. Environment: OPTS (mount options, default
# compress=zstd), N (rounds),
# OUT (where the 200 MiB image and its copy go, default /tmp).
set -u
OPTS=${OPTS:-compress=zstd}; N=${N:-30}; OUT=${OUT:-/tmp}
img=$OUT/btrfs-sync-check.img; snap=$OUT/btrfs-sync-check.copy; mnt=$OUT/btrfs-sync-check.mnt
truncate -s 200M "$img"
dev=$(losetup -f --show "$img")
trap 'umount "$mnt" 2>/dev/null; losetup -d "$dev"; rm -rf "$img" "$snap" "$mnt"' EXIT
mkfs.btrfs -q -f "$dev" >/dev/null 2>&1
mkdir -p "$mnt"
mount -o "$OPTS" "$dev" "$mnt"
btrfs subvolume create "$mnt/sub" >/dev/null
lost=0
for i in $(seq 1 "$N"); do
  python3 -c "import os, sys; open(sys.argv[1], 'w').write('before\n'); os.sync()" "$mnt/sub/f$i"
  dd if="$dev" of="$snap" bs=4M iflag=direct status=none
  ino=$(stat -c %i "$mnt/sub/f$i")
  tree=$(btrfs inspect-internal dump-tree -t 256 "$snap" 2>/dev/null)
  size=$(grep -A1 "key ($ino INODE_ITEM 0) itemoff" <<<"$tree" | grep -o " size [0-9]*" | head -1)
  extents=$(grep -c "key ($ino EXTENT_DATA 0)" <<<"$tree")
  if [ "$size" != " size 7" ] || [ "$extents" != 1 ]; then
    lost=$((lost + 1)); echo "f$i: on the disk after sync:${size:- no inode}, $extents extent(s)"
  fi
done
echo "kernel $(uname -r), mount -o $OPTS: $lost of $N files not on the disk after sync(2)"
[ "$lost" = 0 ]
