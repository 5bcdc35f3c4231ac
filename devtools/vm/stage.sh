#!/bin/sh
# Runs the test command and records its exit status for the host: the result
# is this file, never something read from the console.
. /anklume-vm/config.sh
cd "$CHECKOUT"
/bin/sh /anklume-vm/run.sh
status=$?
# The guest's journal is the first thing to read when a systemd-mode test fails.
[ -d /run/systemd/system ] && journalctl -b --no-pager > /anklume-vm/journal.log 2>&1
echo $status > /anklume-vm/status.partial
mv /anklume-vm/status.partial /anklume-vm/status
sync
echo "anklume-vm: result recorded ($status)" > /dev/console
# systemd mode: a normal shutdown (the host stops waiting for it after a grace).
[ -d /run/systemd/system ] && systemctl --no-block poweroff
exit 0
