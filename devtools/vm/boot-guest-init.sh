#!/bin/busybox sh
# /sbin/init of the tiny systems the boot tests put in the slots. It reports
# what the boot handed over and what it can read to the results disk (a
# virtio disk of serial anklume-results, read by the host after the run),
# then powers off without marking the boot good: to PERSIST, every boot of
# this system is an attempt that did not complete.
#
# anklume.test= on the command line adds a step:
#   pull      ask the host to pull the stick (anklume.ctl port), then read
#             every byte of /filler again from a cold cache
#   shutdown  end through /run/initramfs/shutdown, as systemd-shutdown does
#   bench     report when the initramfs started and ended (kernel log times)
#             and time a plain dd of the slot into a tmpfs (bench/boot.py)
read -r UPTIME_AT_INIT _ < /proc/uptime
# The kernel log's clock, the one the initramfs's lines carry (bench).
echo "<6>boot-guest: init started" > /dev/kmsg 2>/dev/null
/bin/busybox mkdir -p /bin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
grep -q ' /proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q ' /sys ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev

REPORT=/tmp/report
: > "$REPORT"
note() {
    echo "$1=$2" >> "$REPORT"
}

by_serial() {
    for block in /sys/block/vd*; do
        [ "$(cat "$block/serial" 2>/dev/null)" = "$1" ] && echo "/dev/${block##*/}"
    done
}

write_report() {
    disk=$(by_serial anklume-results)
    [ -n "$disk" ] || { echo "boot-guest: no results disk"; return; }
    { echo ANKLUME-RESULT-BEGIN; cat "$REPORT"; echo ANKLUME-RESULT-END; } > /tmp/report.out
    dd if=/tmp/report.out of="$disk" conv=fsync 2>/dev/null
    sync
}

# ok, bad (read, but not the bytes the image was made with) or unreadable
# (a read failed: dm-verity refuses a block that fails its hash).
filler_check() {
    echo 3 > /proc/sys/vm/drop_caches
    sum=$(sha256sum /filler 2>/dev/null) || { echo unreadable; return; }
    [ "${sum%% *}" = "$(cat /etc/filler.sha256)" ] && echo ok || echo bad
}

ctl_port() {
    for name in /sys/class/virtio-ports/*/name; do
        [ "$(cat "$name")" = anklume.ctl ] && { d=${name%/name}; echo "/dev/${d##*/}"; }
    done
}

pull_stick() {
    port=$(ctl_port)
    [ -n "$port" ] || { note PULL no-port; return; }
    exec 3<>"$port"
    echo "unplug anklume-stick" >&3
    read -r reply <&3
    exec 3>&-
    note PULL "$reply"
    # The kernel drops the disk shortly after the host's device_del.
    i=0
    while [ -e /sys/block/sda ] && [ "$i" -lt 60 ]; do sleep 1; i=$((i + 1)); done
    note STICK_GONE "$([ -e /sys/block/sda ] && echo 0 || echo 1)"
    note FILLER_AFTER_PULL "$(filler_check)"
    note RELEASE_AFTER_PULL "$(cat /etc/anklume-release | tr -d '\n')"
}

# The kernel log's time of the first line matching $1 ("" when none).
log_time() {
    dmesg | grep -m 1 -- "$1" | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'
}

log_time_last() {
    dmesg | grep -- "$1" | tail -n 1 | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p'
}

bench() {
    note INIT_UPTIME "$UPTIME_AT_INIT"
    note RUN_INIT "$(log_time 'Run /init as init process')"
    note STICK_FOUND "$(log_time 'anklume: found the stick')"
    note INIT_STARTED "$(log_time 'boot-guest: init started')"
    note COPY_START "$(log_time 'anklume: \[INFO\] Copying')"
    note COPY_END "$(log_time_last 'anklume: copied ')"
    mib=$(dmesg | sed -n 's/.*anklume: copied \([0-9]*\) of.*/\1/p' | tail -n 1)
    [ -n "$mib" ] || return
    mkdir -p /mnt/dd
    mount -t tmpfs -o "size=$((mib + 4))m" ddtest /mnt/dd
    echo 3 > /proc/sys/vm/drop_caches
    read -r t0 _ < /proc/uptime
    dd if=/dev/sda2 of=/mnt/dd/slot.img bs=4M count=$(( (mib + 3) / 4 )) 2>/dev/null
    read -r t1 _ < /proc/uptime
    note DD_START "$t0"
    note DD_END "$t1"
    note DD_MIB "$mib"
    rm -f /mnt/dd/slot.img
    # What reading every block through dm-verity costs (the RAM copy's mapping):
    # the price of finding a flipped byte at boot rather than on read.
    echo 3 > /proc/sys/vm/drop_caches
    read -r t0 _ < /proc/uptime
    dd if=/dev/mapper/anklume-root of=/dev/null bs=4M 2>/dev/null
    note VERITY_READ_RC "$?"
    read -r t1 _ < /proc/uptime
    note VERITY_READ_START "$t0"
    note VERITY_READ_END "$t1"
}

# initramfs-tools' shutdown side, as systemd-shutdown does it: bind
# /run/initramfs on itself, move the API mounts in, pivot, run /shutdown.
initramfs_shutdown() {
    [ -x /run/initramfs/shutdown ] || { echo "boot-guest: no /run/initramfs/shutdown"; return; }
    new=/run/initramfs
    mount --bind "$new" "$new"
    for d in proc sys dev run; do mkdir -p "$new/$d"; done
    mkdir -p "$new/oldroot"
    mount --move /proc "$new/proc"
    mount --move /sys "$new/sys"
    mount --move /dev "$new/dev"
    cd "$new" || return
    pivot_root . oldroot
    exec /bin/busybox chroot . /shutdown poweroff
}

cat /run/anklume/boot.env >> "$REPORT" 2>/dev/null || note HANDOFF missing
note RELEASE "$(cat /etc/anklume-release | tr -d '\n')"
note ROOT_FS "$(awk '$2 == "/" { print $3 }' /proc/mounts | tail -n 1)"
note FILLER "$(filler_check)"
note CORRUPTED_BLOCKS "$(dmesg | grep -c 'verity.*is corrupted')"
note MAPPINGS "$(ls /dev/mapper 2>/dev/null | tr '\n' ' ')"
note PERSIST_MOUNTED "$(grep -c anklume-persist /proc/mounts)"
test=$(sed -n 's/.*anklume\.test=\([a-z]*\).*/\1/p' /proc/cmdline)
[ "$test" = pull ] && pull_stick
[ "$test" = bench ] && bench
write_report
echo "boot-guest: report written"
[ "$test" = shutdown ] && initramfs_shutdown
poweroff -f
