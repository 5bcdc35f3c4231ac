#!/bin/sh
# PID 1 of a plain-mode guest, in the new root: run the command, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
/bin/sh /anklume-vm/stage.sh
sync
exec busybox poweroff -f
