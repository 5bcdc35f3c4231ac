#!/bin/busybox sh
# /run/initramfs/shutdown: the last step of a shutdown (systemd's initramfs
# shutdown protocol). systemd-shutdown switches root to /run/initramfs, the
# system's root left at /oldroot, and runs this with reboot|poweroff|halt|kexec.
# Nothing here runs from the stick or the slot any more, so the overlay, the
# squashfs, the dm-verity mapping and the loop device under a RAM copy can all
# be released before the machine stops.
export PATH=/bin:/sbin
/bin/busybox mkdir -p /bin /proc /sys /dev
/bin/busybox --install -s /bin
action=${1:-poweroff}

say() {
    echo "anklume shutdown: $*" > /dev/console 2>/dev/null || echo "anklume shutdown: $*"
}

grep -q ' /proc proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc

# Deepest mounts first; a busy one is detached lazily rather than kept.
unmount_oldroot() {
    for mnt in $(awk '$2 ~ "^/oldroot" { print $2 }' /proc/mounts | sort -r); do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
    done
}

release_devices() {
    if [ -x /sbin/dmsetup ] && /sbin/dmsetup info anklume-root >/dev/null 2>&1; then
        /sbin/dmsetup remove --retry --noudevsync anklume-root >/dev/null 2>&1 \
            || say "the anklume-root mapping is still busy"
    fi
    losetup -D 2>/dev/null
}

sync
unmount_oldroot
release_devices
left=$(awk '$2 ~ "^/oldroot" { n++ } END { print n + 0 }' /proc/mounts)
maps="an unknown number of"  # without dmsetup nothing can be said
if [ -x /sbin/dmsetup ] && /sbin/dmsetup ls >/dev/null 2>&1; then
    maps=$(/sbin/dmsetup ls 2>/dev/null | grep -c anklume-root)
fi
say "root released (${left} mounts left, ${maps} anklume mappings left); $action"
sync
case "$action" in
    reboot|kexec) reboot -f ;;
    halt) halt -f ;;
    *) poweroff -f ;;
esac
