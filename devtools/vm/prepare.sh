#!/bin/sh
# Runs inside the guest's new root (chroot) before the command or systemd.
# The run directory's config.sh says where the kernel's modules and the
# checkout are; both live on the host root, seen here read-only.
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mode=$1
. /anklume-vm/config.sh

# modprobe looks in /lib/modules/<running kernel>: point it at the extracted package.
# This machine may have a directory of that name (headers, dkms builds): the
# overlay hides it, the host keeps it.
mkdir -p /lib/modules
rm -rf "/lib/modules/$KERNEL_VERSION"
ln -sfn "$KERNEL_ROOT/lib/modules/$KERNEL_VERSION" "/lib/modules/$KERNEL_VERSION"
echo anklume-vm > /etc/hostname

if [ "$mode" = plain ]; then
    # No udev here: load what it would have loaded for our devices.
    modprobe -a loop dm_mod dm_crypt dm_verity virtio_blk virtio_console \
        xhci_pci usb_storage sd_mod btrfs 2>&1 || true
    exit 0
fi

# systemd mode: install anklume Live as a package would, plus the scenario unit.
# This machine may be a container: its marker would make systemd believe the
# guest is one too, and skip what it does on real machines (such as making /
# a shared mount, without which no service's mounts reach the system).
rm -f /.dockerenv /run/.containerenv
cd "$CHECKOUT"
for bin in anklumed anklumectl; do ln -sfn "$CHECKOUT/.venv/bin/$bin" "/usr/bin/$bin"; done
install -m 0644 units/*.service /etc/systemd/system/
install -m 0644 dbus/org.anklume.Live1.conf /usr/share/dbus-1/system.d/
install -m 0644 dbus/org.anklume.Live1.service /usr/share/dbus-1/system-services/
install -m 0644 polkit/org.anklume.live1.policy /usr/share/polkit-1/actions/
install -m 0644 polkit/50-org.anklume.live1.rules /usr/share/polkit-1/rules.d/
install -m 0644 catalog/anklume.catalog /usr/lib/systemd/catalog/ && journalctl --update-catalog
mkdir -p /etc/anklume
[ -f /anklume-vm/anklumed.toml ] && install -m 0644 /anklume-vm/anklumed.toml /etc/anklume/
cat > /etc/systemd/system/anklume-vm-scenario.service <<UNIT
[Unit]
Description=anklume VM test scenario
# Not After=multi-user.target: a unit hanging the boot must not hide the result.
After=basic.target dbus.service
[Service]
# exec, not oneshot: multi-user.target would otherwise wait for the scenario.
Type=exec
ExecStart=/bin/sh /anklume-vm/stage.sh
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
UNIT
# Warnings and errors reach the serial console: the one record left when a
# scenario ends with the guest rebooting (the boot-deadline test reads it).
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nForwardToConsole=yes\nTTYPath=/dev/ttyS0\nMaxLevelConsole=warning\n' \
    > /etc/systemd/journald.conf.d/anklume-vm.conf
# systemd's default start timeout (90 s: anklumed.service has none of its own)
# is for a real machine; a guest under TCG on a busy host is SLOWNESS times
# slower than on the quiet one the tier's waits are written for (seen: anklumed
# took over 90 s to start at a load of 12 on 2 cores): give units that much more.
mkdir -p /etc/systemd/system.conf.d
start_timeout=$(awk -v f="${SLOWNESS:-1}" 'BEGIN { printf "%d", 90 * f + 0.5 }')
printf '[Manager]\nDefaultTimeoutStartSec=%ss\n' "$start_timeout" \
    > /etc/systemd/system.conf.d/anklume-vm.conf
# The host's own services (databases and the like) have no business here.
rm -f /etc/systemd/system/multi-user.target.wants/*
# A scenario's own units (units/*.service in the run directory), enabled.
for unit in /anklume-vm/units/*.service; do
    [ -e "$unit" ] || continue
    install -m 0644 "$unit" /etc/systemd/system/
    systemctl enable "$(basename "$unit")"
done
systemctl enable anklumed.service anklume-boot-check.service anklume-vm-scenario.service
systemctl mask serial-getty@ttyS0.service e2scrub_reap.service >/dev/null 2>&1 || true
