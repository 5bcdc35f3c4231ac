#!/bin/busybox sh
# PID 1 of the test guest. Mounts this machine's root (shared read-only over
# virtio-9p) under a tmpfs overlay, mounts the run directory the host shares
# read-write at /anklume-vm, lets prepare.sh set the guest up, then either runs
# the command (plain mode) or hands over to systemd (systemd mode).
/bin/busybox --install -s /bin
export PATH=/bin

die() {
    echo "anklume-vm init: $*" >&2
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || die "insmod $m failed"; done

mode=plain
for arg in $(cat /proc/cmdline); do
    case "$arg" in anklume.mode=*) mode="${arg#*=}" ;; esac
done

opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" host /host || die "cannot mount the host root"
mount -t tmpfs -o mode=0755 tmpfs /rw || die "no tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || die "cannot mount the overlay"
mkdir -p /newroot/anklume-vm
mount -t 9p -o "$opts" anklume.run /newroot/anklume-vm || die "cannot mount the run directory"
for d in proc sys dev tmp run; do mkdir -p "/newroot/$d"; done
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run

chroot /newroot /bin/sh /anklume-vm/prepare.sh "$mode" || die "prepare.sh failed"

# PID 1 moves into the new root in both modes: the kernel runs its helpers
# (modprobe for a filesystem or a cipher) in PID 1's root.
if [ "$mode" = systemd ]; then
    umount /newroot/run  # systemd mounts its own /run
    exec switch_root /newroot /lib/systemd/systemd
fi
exec switch_root /newroot /bin/sh /anklume-vm/plain-init.sh
