#!/bin/sh
# anklume Live's boot, run by the initramfs (initramfs-tools or mkinitcpio):
#
#   sh anklume-boot.sh ROOTMNT
#   sh anklume-boot.sh --load-modules    (only load_modules: the early start)
#
# Finds the stick's ANKLUME-PERSIST partition, counts the attempt
# (anklume-state.sh record), opens the chosen slot through dm-verity with a
# root hash taken from a signed manifest, optionally copies the slot to RAM
# first (anklume.toram=1), and mounts squashfs + a tmpfs overlay at ROOTMNT.
# It writes the hand-off /run/anklume/boot.env (moved with /run into the new
# root) and prepares /run/initramfs for the shutdown. A slot that fails any
# check falls through to the other one in the same boot. A slot whose own
# kernel is not the one running is started by a redirect: systemd-boot is
# asked for that slot's entry and the machine restarts at once
# (docs/boot-chain.md).
#
# Under Secure Boot the command line is the signed UKI's own (a profile's
# .cmdline: systemd-stub drops the entry's), so it names neither this stick
# nor the slot whose UKI runs: the boot loader's EFI variables do
# (LoaderDevicePartUUID: the ESP, beside PERSIST on the same disk;
# StubImageIdentifier: the UKI's file). Without Secure Boot the entry's
# anklume.persist= and anklume.kernel= win, and where there are no EFI
# variables (a direct kernel boot) they are all there is
# (docs/boot-chain.md, "What the signature covers").
#
# The ANKLUME_* overrides below are for the tests; the initramfs's callers
# (initramfs-tools' script, mkinitcpio's hook) unset them, since the kernel
# hands any X=Y word of its command line to init as environment.
#
# Exit status: 0 the root is mounted; 1 no slot could be verified (the
# console says why and how to recover; the caller then opens a shell).
# Every decision prints one line on the console, starting "anklume:".
set -u

LIB=${ANKLUME_LIB:-/lib/anklume}
KEYS=${ANKLUME_KEYS:-/etc/anklume/keys.d}
CMDLINE=${ANKLUME_CMDLINE:-/proc/cmdline}
RUN=${ANKLUME_RUN:-/run/anklume}
PERSIST_MNT=/run/anklume-persist
EFIVARS=${ANKLUME_EFIVARS:-/sys/firmware/efi/efivars}
SYSFS=/sys                  # the unit tests' harness points it at a tree of its own
SHUTDOWN_ROOT=/run/initramfs # systemd-shutdown's; the unit tests' harness points it elsewhere
FILES=$RUN/boot             # the slot's tree, meta, manifest and signature
MAPPING=anklume-root
MIB=1048576
TORAM_MARGIN=$((256 * MIB)) # room left for the running system after a copy
TORAM_CHUNK_MIB=64          # one dd and one progress line per chunk

# What the boot found; written to the hand-off at the end.
WAIT=30
PERSIST_UUID=""
TORAM_WANTED=0
RAM_CRYPT_WANTED=0
PERSIST_DEV=""
LOWEST_OF=0                 # how many sticks the lowest PARTUUID was chosen among
BOOT_DISK=""
BOOT=""
BOOT_COUNT=""
ROLLBACK_REASON=""
DEGRADED=0
VERITY=""
ROOT_HASH=""
TORAM=0
TRIED=""
FAILURES=""
REASON=""
RAM_CRYPT=unknown
STICK_LOST=0
KERNEL=""                   # whose UKI runs: StubImageIdentifier, or anklume.kernel=
SECURE_BOOT=0               # the firmware's SecureBoot variable is 1
ESP_UUID=""                 # LoaderDevicePartUUID: the ESP this boot came from
AB_STATE=""
REDIRECT_SEEN=0             # this boot found the previous one's redirect: it makes none
EFIVARS_MOUNTED=0

# A line on the console, and in the kernel log (timestamped, kept for the
# journal of the running system; <6> is info: the console shows it once).
say() {
    echo "anklume: $*"
    echo "<6>anklume: $*" > /dev/kmsg 2>/dev/null
    return 0
}

# A step's end, in the kernel log only (<7> is debug: never on the console):
# its time stamp says where the boot's time goes (bench/image_boot.py reads
# them; `dmesg | grep anklume-step` on a booted system).
step() {
    echo "<7>anklume-step: $*" > /dev/kmsg 2>/dev/null
    return 0
}

# ---- the kernel command line -------------------------------------------------

read_cmdline() {
    set -f
    # Read by the shell, not cat: each process costs at boot (bench/boot_processes.py).
    words="" line=""
    while IFS= read -r line || [ -n "$line" ]; do
        words="$words $line"
        line=""
    done 2>/dev/null < "$CMDLINE"
    # shellcheck disable=SC2086 # word splitting is the point
    for arg in $words; do
        case "$arg" in
            anklume.persist=PARTUUID=*)
                lower_hex "${arg#anklume.persist=PARTUUID=}"
                PERSIST_UUID=$LOWER ;;
            anklume.persist=*) say "anklume.persist= takes PARTUUID=...; ignored" ;;
            anklume.toram|anklume.toram=1|anklume.toram=yes) TORAM_WANTED=1 ;;
            anklume.ram_crypt|anklume.ram_crypt=1|anklume.ram_crypt=yes) RAM_CRYPT_WANTED=1 ;;
            anklume.wait=*) WAIT=$(number "${arg#anklume.wait=}" 30) ;;
            anklume.kernel=A|anklume.kernel=B) KERNEL=${arg#anklume.kernel=} ;;
        esac
    done
    set +f
}

# lower_hex TEXT: LOWER gets TEXT with A-F lower-cased (a UUID as the shell
# compares it), by the shell: no process.
lower_hex() {
    LOWER="" rest=$1
    while [ -n "$rest" ]; do
        c=${rest%"${rest#?}"} rest=${rest#?}
        case $c in A) c=a ;; B) c=b ;; C) c=c ;; D) c=d ;; E) c=e ;; F) c=f ;; esac
        LOWER=$LOWER$c
    done
}

# ---- what the boot loader tells: EFI variables ----------------------------------

GLOBAL_GUID=8be4df61-93ca-11d2-aa0d-00e098032b8c  # the UEFI specification's

# SecureBoot: 4 bytes of attributes, then one byte, 1 when enforced.
secure_boot_enforced() {
    # shellcheck disable=SC2046 # one word a byte
    set -- $(cat "$EFIVARS/SecureBoot-$GLOBAL_GUID" 2>/dev/null | od -An -v -tu1)
    [ "$#" = 5 ] && [ "$5" = 1 ]
}

# The slot whose UKI systemd-stub started, from its file's path
# (\EFI\anklume\slot-b.efi; FAT ignores case).
stub_slot() {
    case "$(sh "$LIB/anklume-redirect.sh" get "$EFIVARS" StubImageIdentifier | tr 'A-Z' 'a-z')" in
        *[\\/]slot-a.efi) echo A ;;
        *[\\/]slot-b.efi) echo B ;;
        *) return 1 ;;
    esac
}

# read_efi_boot: SECURE_BOOT, ESP_UUID, and KERNEL (under Secure Boot
# always, otherwise when the command line did not say).
read_efi_boot() {
    mount_efivars || return 0
    secure_boot_enforced && SECURE_BOOT=1
    lower_hex "$(sh "$LIB/anklume-redirect.sh" get "$EFIVARS" LoaderDevicePartUUID)"
    ESP_UUID=$LOWER
    case "$ESP_UUID" in *[!0-9a-f-]*) ESP_UUID="" ;; esac
    if [ "$SECURE_BOOT" = 1 ]; then
        PERSIST_UUID=""  # the stick is the ESP's, whatever a command line said
        KERNEL=$(stub_slot) || KERNEL=""
    elif [ -z "$KERNEL" ]; then
        KERNEL=$(stub_slot) || KERNEL=""
    fi
    release_efivars
    effective_cmdline
}

# anklume-state.sh reads the kernel's slot from a command line: it gets
# this boot's words with the kernel found here last (the last word wins).
effective_cmdline() {
    [ -n "$KERNEL" ] || return 0
    mkdir -p "$RUN"
    { tr '\n' ' ' < "$CMDLINE" 2>/dev/null; echo "anklume.kernel=$KERNEL"; } > "$RUN/cmdline"
    CMDLINE=$RUN/cmdline
}

# number TEXT DEFAULT: TEXT if it is a whole number, else DEFAULT.
number() {
    case "$1" in
        ''|*[!0-9]*) echo "$2" ;;
        *) echo "$1" ;;
    esac
}

# What this script itself uses: PERSIST's ext4, the EFI variables, dm-verity,
# loop (veritysetup attaches the hash tree, a file in RAM, and a copy to
# RAM to loop devices: without it, every slot fails verity), the squashfs
# and the overlay. One modprobe for all (-a: kmod's and busybox's go on past
# a module they cannot load). Loading a module is the cost, not the
# process: in a TCG guest, thirteen modprobes took 1.7 s and one of the same
# thirteen as many (bench/image_boot.py).
#
# crypto-sha256 (on x86, sha256_ssse3: SHA-NI, AVX2, SSSE3) before the
# verity mapping opens: dm-verity binds the fastest SHA-256 the kernel has at
# that moment and keeps it for the whole session, and Debian's kernel builds
# in only the generic C one (seen: "verity: sha256 using shash
# sha256-generic", though the CPU had SHA-NI). Every block the system reads
# from the slot is hashed with it. First in the list, as the kernel checks
# each module's signature with it too.
#
# The initramfs starts this list early too, in the background, while udev
# finds the stick (--load-modules: initramfs-tools' scripts/init-top/anklume,
# mkinitcpio's early hook): in the boot's own path it took 1.4 s of a TCG
# guest's 6 s of initramfs work, during 5 s spent waiting for the stick.
# This second modprobe then only waits: the kernel makes a load of a module
# that another is loading wait for it, and kmod counts "already loaded" as
# done, so everything is loaded when it returns, whichever finished first.
load_modules() {
    modprobe -qa crypto-sha256 ext4 efivarfs loop dm_mod dm_verity squashfs overlay \
        2>/dev/null || true
}

# The drivers of a USB stick: udev loaded those of the hardware present
# before this script ran (both initramfs flavours run it), so they are
# loaded here only when the stick is not there at first sight, for a
# controller udev missed, instead of on every boot for hardware that may
# not exist (ehci and ohci on a machine with only xhci).
load_stick_drivers() {
    modprobe -qa usb_storage uas sd_mod xhci_pci ehci_pci ohci_pci 2>/dev/null || true
}

# ---- finding the stick ---------------------------------------------------------

# The GPT name of a partition, as the kernel read it (no udev needed).
# Read by the shell, not sed: each process costs at boot (bench/boot_processes.py).
part_name() {
    PART_NAME=""
    while IFS= read -r line; do
        case "$line" in PARTNAME=*) PART_NAME=${PART_NAME:+$PART_NAME
}${line#PARTNAME=} ;; esac
    done 2>/dev/null < "$SYSFS/class/block/$1/uevent"
}

# CANDIDATES gets the names of every ANKLUME-PERSIST partition ("sda4 sdb4"),
# from sysfs alone: a look costs no process, so find_persist looks often.
persist_candidates() {
    CANDIDATES=""
    for sys in "$SYSFS"/class/block/*; do
        [ -e "$sys/partition" ] || continue
        part_name "${sys##*/}"
        [ "$PART_NAME" = ANKLUME-PERSIST ] && CANDIDATES="$CANDIDATES ${sys##*/}"
    done
    CANDIDATES=${CANDIDATES# }
    [ -n "$CANDIDATES" ]
}

# part_uuids PARTITION...: UUIDS gets "PARTITION PARTUUID" lines (lower
# case) from one blkid for them all: the kernel keeps no PARTUUID in sysfs,
# and udev's /dev/disk/by-partuuid may not be there yet.
part_uuids() {
    UUIDS="" name=""
    [ "$#" -gt 0 ] || return 0
    for part; do shift; set -- "$@" "/dev/$part"; done
    while IFS== read -r key value; do
        case "$key" in
            DEVNAME) name=${value##*/} ;;
            PART_ENTRY_UUID) lower_hex "$value"; UUIDS="$UUIDS$name $LOWER
" ;;
        esac
    done <<EOF
$(blkid -p -o export -s PART_ENTRY_UUID "$@" 2>/dev/null)
EOF
}

# uuid_of PARTITION: UUID gets its PARTUUID from UUIDS (status 1: none).
uuid_of() {
    UUID=""
    while read -r listed uuid; do
        [ "$listed" = "$1" ] && { UUID=$uuid; return 0; }
    done <<EOF
$UUIDS
EOF
    return 1
}

# Sets PERSIST_DEV, or fails when none appears within WAIT seconds. It
# looks every tenth of a second, as initramfs-tools' own wait for root=
# (scripts/local) does: the stick's partitions appear between two looks,
# and a whole second's sleep cost the boot a third of a second on average
# (bench/image_boot.py's step times). A busybox whose sleep takes only
# whole seconds looks once a second.
find_persist() {
    ticks=0 tick=0.1 per_second=10
    while :; do
        if pick_persist; then
            settle_the_lowest
            return 0
        fi
        if [ "$ticks" -eq 0 ]; then
            load_stick_drivers
            pick_persist && { settle_the_lowest; return 0; }
            say "waiting up to $WAIT s for the anklume stick (partition ANKLUME-PERSIST${PERSIST_UUID:+ PARTUUID=$PERSIST_UUID}${ESP_UUID:+ beside the ESP PARTUUID=$ESP_UUID})"
        fi
        [ "$ticks" -ge $((WAIT * per_second)) ] && return 1
        sleep "$tick" 2>/dev/null || { tick=1 per_second=1; sleep 1; }
        ticks=$((ticks + 1))
    done
}

# Sets PERSIST_DEV and PERSIST_UUID: the PERSIST the command line names, or
# the one on the disk of the ESP the boot loader came from, or else the
# first by PARTUUID (saying so when there are several).
pick_persist() {
    persist_candidates || return 1
    # shellcheck disable=SC2086 # one word a partition
    set -- $CANDIDATES
    if [ -n "$PERSIST_UUID" ]; then
        part_uuids "$@"
        for name; do
            uuid_of "$name" && [ "$UUID" = "$PERSIST_UUID" ] && { PERSIST_DEV=$name; return 0; }
        done
        return 1
    fi
    if [ -n "$ESP_UUID" ]; then
        pick_beside_the_esp "$@"
        return
    fi
    part_uuids "$@"
    first=$(printf '%s' "$UUIDS" | sort -k2 | head -n 1)
    [ -n "$first" ] || return 1
    PERSIST_DEV=${first%% *}
    PERSIST_UUID=${first#* }
    LOWEST_OF=$#
    return 0
}

# Neither the boot loader nor the entry named the stick (no EFI variables):
# the lowest PARTUUID of all plugged in boots. Sticks plugged in together
# do not appear together (usb-storage scans each a second after it is
# seen, delay_use), and a look every tenth of a second sees the first
# alone: the choice is made again a second later, then said.
settle_the_lowest() {
    [ "$LOWEST_OF" -gt 0 ] || return 0
    first_dev=$PERSIST_DEV first_uuid=$PERSIST_UUID
    sleep 1
    PERSIST_UUID=""
    pick_persist || { PERSIST_DEV=$first_dev PERSIST_UUID=$first_uuid; }
    if [ "$LOWEST_OF" -gt 1 ]; then
        say "$LOWEST_OF anklume sticks are plugged in; booting the one whose PERSIST is PARTUUID=$PERSIST_UUID (/dev/$PERSIST_DEV). Add anklume.persist=PARTUUID=... to the boot entry to choose"
    fi
    LOWEST_OF=0
}

# pick_beside_the_esp CANDIDATE...: the PERSIST whose disk holds the
# partition of PARTUUID ESP_UUID (the ESP the boot loader came from), never
# another stick's. One blkid reads the candidates' disks' partitions.
pick_beside_the_esp() {
    partitions_beside "$@"
    # shellcheck disable=SC2086 # one word a partition
    part_uuids $BESIDE "$@"
    esp_disk=""
    while read -r name uuid; do
        [ "$uuid" = "$ESP_UUID" ] && { parent_disk "$name"; esp_disk=$DISK; break; }
    done <<EOF
$UUIDS
EOF
    [ -n "$esp_disk" ] || return 1
    for name in $CANDIDATES; do
        parent_disk "$name" && [ "$DISK" = "$esp_disk" ] || continue
        uuid_of "$name" || return 1
        PERSIST_DEV=$name
        PERSIST_UUID=$UUID
        return 0
    done
    return 1
}

# partitions_beside PARTITION...: BESIDE gets the other partitions of the
# disks that hold these.
partitions_beside() {
    BESIDE=""
    for name; do
        parent_disk "$name" || continue
        for sys in "$SYSFS/class/block/$DISK/$DISK"*; do
            [ -e "$sys/partition" ] || continue
            case " $* $BESIDE " in *" ${sys##*/} "*) ;; *) BESIDE="$BESIDE ${sys##*/}" ;; esac
        done
    done
}

# parent_disk PARTITION: DISK gets the whole disk it belongs to (sdb for
# sdb4: sysfs keeps a partition inside its disk's directory), by the shell.
parent_disk() {
    DISK=""
    for sys in "$SYSFS"/class/block/*; do
        [ -e "$sys/$1/partition" ] && { DISK=${sys##*/}; return 0; }
    done
    return 1
}

# The partition of DISK whose GPT name is NAME, as SIBLING.
sibling_partition() {
    SIBLING=""
    for sys in "$SYSFS/class/block/$1/$1"*; do
        [ -e "$sys/partition" ] || continue
        part_name "${sys##*/}"
        [ "$PART_NAME" = "$2" ] && { SIBLING=${sys##*/}; return 0; }
    done
    return 1
}

# ---- PERSIST and the decision ----------------------------------------------------

mount_persist() {
    mkdir -p "$PERSIST_MNT"
    mount -t ext4 -o nodev,nosuid,noexec,noatime "/dev/$PERSIST_DEV" "$PERSIST_MNT"
}

unmount_persist() {
    grep -q " $PERSIST_MNT " /proc/mounts || return 0
    sync
    umount "$PERSIST_MNT" || umount -l "$PERSIST_MNT"
}

# take_decision OUTPUT: sets BOOT, BOOT_COUNT, ROLLBACK_REASON, DEGRADED from
# anklume-state.sh's KEY=value lines (read, never evaluated).
take_decision() {
    BOOT=""
    while IFS== read -r key value; do
        case "$key" in
            BOOT) BOOT=$value ;;
            AB_STATE) AB_STATE=$value ;;
            BOOT_COUNT) BOOT_COUNT=$value ;;
            ROLLBACK_REASON) ROLLBACK_REASON=$value ;;
            DEGRADED) DEGRADED=$value ;;
            PROBLEM) say "PERSIST: $value" ;;
        esac
    done <<EOF
$1
EOF
    case "$BOOT" in A|B) ;; *) BOOT="" ;; esac
}

record_attempt() {
    say "counting the attempt on PERSIST (/dev/$PERSIST_DEV)"
    # No redirect file, no request to take: the usual boot spares a shell.
    out=REDIRECT=none
    if [ -e "$PERSIST_MNT/redirect" ]; then
        out=$(sh "$LIB/anklume-state.sh" redirect-take "$PERSIST_MNT" "$CMDLINE")
    fi
    case "$out" in
        REDIRECT=landed*)
            REDIRECT_SEEN=1
            take_decision "$out"
            say "slot $BOOT on its own kernel, as the previous boot asked: its attempt was counted there"
            report_decision
            return 0 ;;
        REDIRECT=none) ;;
        REDIRECT=missed*)
            REDIRECT_SEEN=1
            say "the previous boot restarted for slot $(echo "$out" | sed -n 's/^SLOT=//p')'s own kernel, but slot ${KERNEL:-?}'s runs (the firmware ignored the request, or that boot died before its initramfs); this boot counts" ;;
        *)
            REDIRECT_SEEN=1
            say "the previous boot's restart request is set aside ($(echo "$out" | sed -n 's/^REDIRECT=//p'): PERSIST changed since, or it cannot be read or removed); this boot counts" ;;
    esac
    out=$(sh "$LIB/anklume-state.sh" record "$PERSIST_MNT" "$CMDLINE") \
        || say "could not write the boot count to PERSIST (the stick may be read-only or full); booting anyway"
    take_decision "$out"
    report_decision
}

report_decision() {
    degraded=""
    [ "$DEGRADED" = 1 ] && degraded=", degraded: no other good slot"
    say "slot $BOOT, attempt $BOOT_COUNT${ROLLBACK_REASON:+, rolled back ($ROLLBACK_REASON)}$degraded"
}

# ---- the redirect ----------------------------------------------------------------
#
# The slot decided is not the one whose kernel runs (a rollback, a
# fall-through, ab-state edited, a cut between PERSIST's write and the
# ESP's): systemd-boot is asked to start that slot's own entry once
# (LoaderEntryOneShot), PERSIST gets the decision (redirect), and the
# machine restarts. The next boot takes the decision without counting again.
# Without EFI variables, an entry or a write, the slot boots on this kernel
# for this one boot, as before, and anklumed rewrites the menu.

mount_efivars() {
    [ -d /sys/firmware/efi ] || return 1
    grep -q " $EFIVARS efivarfs " /proc/mounts && return 0
    if ! mount -t efivarfs efivarfs "$EFIVARS" 2>/dev/null; then
        modprobe -q efivarfs 2>/dev/null  # load_modules loaded it, unless it failed
        mount -t efivarfs efivarfs "$EFIVARS" 2>/dev/null || return 1
    fi
    EFIVARS_MOUNTED=1
}

release_efivars() {
    [ "$EFIVARS_MOUNTED" = 1 ] && umount "$EFIVARS" 2>/dev/null
    EFIVARS_MOUNTED=0
}

# redirect_if_needed: returns only when this boot goes on here.
redirect_if_needed() {
    [ -n "$KERNEL" ] && [ -n "$BOOT" ] && [ "$BOOT" != "$KERNEL" ] || return 0
    here="slot $BOOT boots on slot $KERNEL's kernel for this boot"
    if [ "$REDIRECT_SEEN" = 1 ]; then
        say "$here: the previous boot already restarted for a kernel (never twice in a row)"
        return 0
    fi
    if ! mount_efivars; then
        say "$here: the firmware offers no EFI variables to ask the boot loader for slot $BOOT's own"
        return 0
    fi
    entry=$(sh "$LIB/anklume-redirect.sh" entry "$EFIVARS" "$BOOT" "$TORAM_WANTED") || {
        say "$here: the boot menu has no entry of slot $BOOT's own kernel"
        release_efivars
        return 0
    }
    if ! sh "$LIB/anklume-redirect.sh" set "$EFIVARS" "$entry"; then
        say "$here: the boot loader's one-shot entry (LoaderEntryOneShot) could not be set"
        release_efivars
        return 0
    fi
    if ! sh "$LIB/anklume-state.sh" redirect-mark "$PERSIST_MNT" "$BOOT" "$AB_STATE" \
            "$BOOT_COUNT" "$ROLLBACK_REASON" "$DEGRADED"; then
        sh "$LIB/anklume-redirect.sh" clear "$EFIVARS"
        say "$here: the restart could not be recorded on PERSIST"
        release_efivars
        return 0
    fi
    say "slot $BOOT's own kernel is not the one running (slot $KERNEL's): restarting into boot entry $entry"
    release_efivars
    unmount_persist
    reboot -f
    # Still here: the restart failed. Take the request back and go on.
    mount_persist || no_slot "ANKLUME-PERSIST (/dev/$PERSIST_DEV) cannot be mounted again"
    sh "$LIB/anklume-state.sh" redirect-take "$PERSIST_MNT" >/dev/null
    mount_efivars && sh "$LIB/anklume-redirect.sh" clear "$EFIVARS"
    release_efivars
    say "$here: the restart failed"
}

# fall_through SLOT REASON: the slot failed in this boot; the state script
# makes the other slot primary if it can, and says which to try next.
fall_through() {
    FAILURES="$FAILURES slot $1: $2;"
    out=$(sh "$LIB/anklume-state.sh" fallthrough "$PERSIST_MNT" "$1" "$2")
    take_decision "$out"
    if [ -n "$BOOT" ]; then
        say "slot $1 refused ($2); trying slot $BOOT"
    fi
}

# ---- one slot ---------------------------------------------------------------------

# Values of the slot's validated meta (anklume-state.sh slot-info), as META_*.
read_slot_info() {
    META_STATUS="" META_SIZE="" META_ROOT_HASH="" META_SALT=""
    META_DATA_BLOCK_SIZE="" META_HASH_BLOCK_SIZE="" META_HASH_ALG="" META_VERSION=""
    out=$(sh "$LIB/anklume-state.sh" slot-info "$PERSIST_MNT" "$1")
    while IFS== read -r key value; do
        case "$key" in
            STATUS) META_STATUS=$value ;;
            SIZE) META_SIZE=$value ;;
            ROOT_HASH) META_ROOT_HASH=$value ;;
            SALT) META_SALT=$value ;;
            DATA_BLOCK_SIZE) META_DATA_BLOCK_SIZE=$value ;;
            HASH_BLOCK_SIZE) META_HASH_BLOCK_SIZE=$value ;;
            HASH_ALG) META_HASH_ALG=$value ;;
            VERSION) META_VERSION=$value ;;
        esac
    done <<EOF
$out
EOF
}

# The manifest's fields, as MAN_* (only the ones compared with the meta).
read_manifest() {
    MAN_SIZE="" MAN_ROOT_HASH="" MAN_SALT="" MAN_DATA_BLOCK_SIZE=4096
    MAN_HASH_BLOCK_SIZE=4096 MAN_HASH_ALG=sha256
    while IFS== read -r key value; do
        case "$key" in
            SIZE) MAN_SIZE=$value ;;
            ROOT_HASH) MAN_ROOT_HASH=$value ;;
            SALT) MAN_SALT=$value ;;
            DATA_BLOCK_SIZE) MAN_DATA_BLOCK_SIZE=$value ;;
            HASH_BLOCK_SIZE) MAN_HASH_BLOCK_SIZE=$value ;;
            HASH_ALG) MAN_HASH_ALG=$value ;;
        esac
    done < "$1"
}

have_keys() {
    for key in "$KEYS"/*.pem; do
        [ -f "$key" ] && return 0
    done
    return 1
}

# copy_slot_files SLOT: the tree, manifest and signature go to RAM, so the
# checks below and dm-verity read copies no one can change under them.
copy_slot_files() {
    rm -rf "$FILES"
    mkdir -p "$FILES"
    cp "$PERSIST_MNT/slots/$1.verity" "$FILES/tree" 2>/dev/null || { REASON=missing-tree; return 1; }
    have_keys || return 0
    cp "$PERSIST_MNT/slots/$1.manifest" "$FILES/manifest" 2>/dev/null \
        || { REASON=missing-manifest; return 1; }
    cp "$PERSIST_MNT/slots/$1.manifest.sig" "$FILES/manifest.sig" 2>/dev/null \
        || { REASON=missing-signature; return 1; }
}

# A raw Ed25519 signature (base64, as anklume-bundle writes it) of the
# manifest's exact bytes, by any key built into the initramfs.
signature_valid() {
    base64 -d < "$FILES/manifest.sig" > "$FILES/manifest.sig.bin" 2>/dev/null || return 1
    for key in "$KEYS"/*.pem; do
        openssl pkeyutl -verify -pubin -inkey "$key" -rawin -in "$FILES/manifest" \
            -sigfile "$FILES/manifest.sig.bin" >/dev/null 2>&1 && return 0
    done
    return 1
}

manifest_matches_meta() {
    [ "$MAN_ROOT_HASH" = "$META_ROOT_HASH" ] && [ "$MAN_SALT" = "$META_SALT" ] \
        && [ "$MAN_SIZE" = "$META_SIZE" ] \
        && [ "$MAN_DATA_BLOCK_SIZE" = "${META_DATA_BLOCK_SIZE:-4096}" ] \
        && [ "$MAN_HASH_BLOCK_SIZE" = "${META_HASH_BLOCK_SIZE:-4096}" ] \
        && [ "$MAN_HASH_ALG" = "${META_HASH_ALG:-sha256}" ]
}

# trusted_root_hash: sets ROOT_HASH and VERITY, or REASON.
trusted_root_hash() {
    if ! have_keys; then
        ROOT_HASH=$META_ROOT_HASH
        VERITY=unsigned
        return 0
    fi
    signature_valid || { REASON=signature; return 1; }
    read_manifest "$FILES/manifest"
    manifest_matches_meta || { REASON=root-hash; return 1; }
    ROOT_HASH=$MAN_ROOT_HASH
    VERITY=signed
}

# PADDED: the bytes the slot's data occupies, SIZE rounded up to whole data
# blocks (a variable, not printed: no subshell at boot).
padded_size() {
    block=${META_DATA_BLOCK_SIZE:-4096}
    PADDED=$(( (META_SIZE + block - 1) / block * block ))
}

# The partition is at least as large as the slot's data (its size in
# sectors read by the shell: no process).
partition_holds_slot() {
    sectors=""
    read -r sectors 2>/dev/null < "$SYSFS/class/block/$1/size"
    case "$sectors" in ''|*[!0-9]*) return 1 ;; esac
    padded_size
    [ $((sectors * 512)) -ge "$PADDED" ]
}

# open_slot SLOT: verity mapping opened and its squashfs mounted at
# $RUN/lower; on failure REASON says why (anklume-state.sh fallthrough's words).
open_slot() {
    slot=$1
    read_slot_info "$slot"
    [ -n "$META_SIZE" ] && [ -n "$META_ROOT_HASH" ] || { REASON=bad-meta; return 1; }
    copy_slot_files "$slot" || return 1
    step "slot $slot's tree and manifest copied"
    trusted_root_hash || return 1
    step "slot $slot's root hash trusted ($VERITY)"
    sibling_partition "$BOOT_DISK" "ANKLUME-OS-$slot" || { REASON=short-slot; return 1; }
    part=$SIBLING
    partition_holds_slot "$part" || { REASON=short-slot; return 1; }
    data=/dev/$part
    TORAM=0
    if [ "$TORAM_WANTED" = 1 ] && toram_fits; then
        if copy_to_ram "$data"; then
            data=$RUN/ram/slot.img
            TORAM=1
        elif [ "$STICK_LOST" = 1 ]; then
            REASON=stick-removed
            return 1
        fi
    fi
    veritysetup open "$data" "$MAPPING" "$FILES/tree" "$ROOT_HASH" >/dev/null 2>&1 \
        || { release_ram_copy; REASON=verity; return 1; }
    step "slot $slot's verity mapping open"
    mkdir -p "$RUN/lower"
    corrupted=$(corruption_reports)
    if ! mount -t squashfs -o ro "/dev/mapper/$MAPPING" "$RUN/lower" 2>/dev/null; then
        # A block that fails its hash fails the mount: that is verity's doing.
        REASON=mount
        if verity_corrupted || [ "$(corruption_reports)" -gt "$corrupted" ]; then
            REASON=verity
        fi
        veritysetup close "$MAPPING" 2>/dev/null
        release_ram_copy
        return 1
    fi
}

# dm-verity's own word on the open mapping: "status: corrupted" once any
# block failed its hash. Its kernel messages alone are not enough: they are
# rate-limited, and a second slot tried within seconds of the first may log
# none (seen: slot B's refusal read as a mount failure).
verity_corrupted() {
    veritysetup status "$MAPPING" 2>/dev/null | grep -q 'status:[[:space:]]*corrupted'
}

# How many blocks dm-verity has refused so far (its kernel messages).
corruption_reports() {
    dmesg 2>/dev/null | grep -c 'verity.*is corrupted'
}

# ---- toram -------------------------------------------------------------------------

toram_fits() {
    available=$(sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo)
    padded_size
    need=$((PADDED + TORAM_MARGIN))
    if [ $((available * 1024)) -lt "$need" ]; then
        say "not enough RAM to copy the system ($((need / MIB)) MiB needed, $((available / 1024)) MiB free); booting from the stick instead"
        return 1
    fi
}

# copy_to_ram DEVICE: the slot's bytes (SIZE, not the partition) into a
# tmpfs file of its own, in large chunks, with progress on the console.
copy_to_ram() {
    padded_size
    mib=$(( (PADDED + MIB - 1) / MIB ))
    mkdir -p "$RUN/ram"
    mount -t tmpfs -o "size=$((mib + 1))m,mode=0700" anklume-ram "$RUN/ram" || return 1
    say "[INFO] Copying squashfs to RAM ($mib MiB)..."
    done_mib=0
    while [ "$done_mib" -lt "$mib" ]; do
        chunk=$TORAM_CHUNK_MIB
        [ $((mib - done_mib)) -lt "$chunk" ] && chunk=$((mib - done_mib))
        # O_DIRECT reads: the stick's bytes go straight into the copy, not
        # through a page cache that would hold them a second time in RAM.
        if ! dd if="$1" of="$RUN/ram/slot.img" bs=4M iflag=direct,skip_bytes,count_bytes \
            oflag=seek_bytes skip=$((done_mib * MIB)) seek=$((done_mib * MIB)) \
            count=$((chunk * MIB)) conv=notrunc 2>/dev/null; then
            release_ram_copy
            if stick_lost; then
                STICK_LOST=1
                say "the stick was removed during the copy to RAM"
            else
                say "the copy to RAM failed (a read error on the stick); booting from the stick instead"
            fi
            return 1
        fi
        done_mib=$((done_mib + chunk))
        say "copied $done_mib of $mib MiB ($((done_mib * 100 / mib))%)"
    done
    truncate -s "$PADDED" "$RUN/ram/slot.img"
    [ "$(stat -c %s "$RUN/ram/slot.img")" = "$PADDED" ] || { release_ram_copy; return 1; }
}

# The stick's disk is gone: the kernel drops a pulled disk a moment after
# its reads start failing, so a read error waits a little for that.
stick_lost() {
    tries=0
    while [ "$tries" -lt 15 ]; do
        [ -e "$SYSFS/class/block/$BOOT_DISK" ] || return 0
        sleep 1
        tries=$((tries + 1))
    done
    return 1
}

# The stick came back (the same PERSIST, whatever its new device name): the
# boot goes on from it, without a copy. The attempt was counted already.
wait_for_the_stick_again() {
    STICK_LOST=0
    TORAM_WANTED=0
    umount -l "$PERSIST_MNT" 2>/dev/null
    say "plug the stick back in: the boot goes on from it, without the copy to RAM"
    find_persist || return 1
    parent_disk "$PERSIST_DEV"
    BOOT_DISK=$DISK
    mount_persist
}

release_ram_copy() {
    grep -q " $RUN/ram " /proc/mounts && umount "$RUN/ram"
    return 0
}

# ---- the root ------------------------------------------------------------------------

mount_root() {
    mkdir -p "$RUN/rw"
    mount -t tmpfs -o mode=0755 anklume-rw "$RUN/rw" || return 1
    mkdir -p "$RUN/rw/upper" "$RUN/rw/work"
    mount -t overlay -o "lowerdir=$RUN/lower,upperdir=$RUN/rw/upper,workdir=$RUN/rw/work" \
        anklume-root "$1"
}

# AMD SME or Intel TME as the kernel reported it; never claimed without it.
ram_crypt_state() {
    log=$(dmesg 2>/dev/null) || { echo unknown; return; }
    [ -n "$log" ] || { echo unknown; return; }
    case "$log" in
        *"Memory Encryption Features active"*|*"x86/tme: enabled by BIOS"*) echo active; return ;;
    esac
    if grep -qw 'sme\|tme' /proc/cpuinfo 2>/dev/null; then
        case "$log" in *"x86/tme: not enabled"*) echo inactive ;; *) echo unknown ;; esac
        return
    fi
    echo inactive
}

write_handoff() {
    rollback=0
    from=""
    if [ -n "$ROLLBACK_REASON" ]; then
        rollback=1
        from=$( [ "$BOOT" = A ] && echo B || echo A )
    fi
    [ -d "$RUN" ] || mkdir -p "$RUN"
    # printf, a builtin: no cat process.
    printf 'SLOT=%s\nBOOT_COUNT=%s\nROLLBACK=%s\nROLLBACK_FROM=%s\nROLLBACK_REASON=%s\nTORAM=%s\nVERITY=%s\nROOT_HASH=%s\nPERSIST_PARTUUID=%s\nBOOT_DISK=/dev/%s\nDEGRADED=%s\nRAM_CRYPT=%s\nKERNEL=%s\nSECURE_BOOT=%s\n' \
        "$BOOT" "$BOOT_COUNT" "$rollback" "$from" "$ROLLBACK_REASON" "$TORAM" "$VERITY" \
        "$ROOT_HASH" "$PERSIST_UUID" "$BOOT_DISK" "$DEGRADED" "$RAM_CRYPT" "$KERNEL" \
        "$SECURE_BOOT" > "$RUN/boot.env.tmp"
    mv "$RUN/boot.env.tmp" "$RUN/boot.env"
}

# The shutdown half (systemd-shutdown runs /run/initramfs/shutdown): a tmpfs
# of its own, since initramfs-tools mounts /run noexec. One mkdir for every
# directory and one cp per directory of files: each process costs at boot
# (a cp and a mkdir a file took 0.3 s of a TCG guest's boot).
prepare_shutdown() {
    [ -x "$LIB/anklume-shutdown.sh" ] || return 0
    mkdir -p "$SHUTDOWN_ROOT"
    mount -t tmpfs -o mode=0755 anklume-shutdown "$SHUTDOWN_ROOT" || return 0
    shutdown_files
    # shellcheck disable=SC2086 # one word a directory
    mkdir -p "$SHUTDOWN_ROOT/bin" "$SHUTDOWN_ROOT/sbin" "$SHUTDOWN_ROOT/oldroot" \
        "$SHUTDOWN_ROOT/proc" "$SHUTDOWN_ROOT/sys" "$SHUTDOWN_ROOT/dev" \
        "$SHUTDOWN_ROOT/run" $SHUTDOWN_DIRS
    for busybox in /bin/busybox /usr/bin/busybox /sbin/busybox; do
        [ -x "$busybox" ] && break
    done
    cp "$busybox" "$SHUTDOWN_ROOT/bin/busybox" || return 0
    # Executable as its source is (checked above): cp keeps the mode.
    cp "$LIB/anklume-shutdown.sh" "$SHUTDOWN_ROOT/shutdown"
    copy_shutdown_files
}

# shutdown_files: SHUTDOWN_FILES gets the hook's list (dmsetup and the
# libraries of it and busybox, absolute paths, sorted), SHUTDOWN_DIRS their
# directories under SHUTDOWN_ROOT.
shutdown_files() {
    SHUTDOWN_FILES="" SHUTDOWN_DIRS=""
    [ -r "$LIB/shutdown-files" ] || return 0
    while read -r file; do
        case "$file" in /*/*) ;; *) continue ;; esac
        SHUTDOWN_FILES="$SHUTDOWN_FILES $file"
        case " $SHUTDOWN_DIRS " in
            *" $SHUTDOWN_ROOT${file%/*} "*) ;;
            *) SHUTDOWN_DIRS="$SHUTDOWN_DIRS $SHUTDOWN_ROOT${file%/*}" ;;
        esac
    done < "$LIB/shutdown-files"
}

# One cp for the files of each directory, in the list's (sorted) order; a
# file that cannot be copied leaves the others copied.
copy_shutdown_files() {
    group=""
    set --
    for file in $SHUTDOWN_FILES; do
        if [ "${file%/*}" != "$group" ]; then
            [ "$#" -eq 0 ] || cp "$@" "$SHUTDOWN_ROOT$group/" 2>/dev/null
            group=${file%/*}
            set --
        fi
        set -- "$@" "$file"
    done
    [ "$#" -eq 0 ] || cp "$@" "$SHUTDOWN_ROOT$group/" 2>/dev/null
    return 0
}

no_slot() {
    say "no anklume slot could be verified:${FAILURES:- none was tried}"
    say "$1"
    say "the system cannot start. See 'Recovering a stick' in the anklume documentation: rewrite a slot with anklume-bundle from another computer, or boot another stick. A shell follows."
    unmount_persist
    exit 1
}

main() {
    if [ "${1:-}" = --load-modules ]; then
        load_modules
        step "modules loaded early (in the background)"
        return 0
    fi
    rootmnt=$1
    step "started"
    read_cmdline
    load_modules
    step "modules loaded"
    read_efi_boot
    step "EFI variables read"
    [ "$SECURE_BOOT" = 1 ] && say "Secure Boot: the signed kernel's own command line${KERNEL:+, slot $KERNEL's kernel}${ESP_UUID:+, the stick of ESP PARTUUID=$ESP_UUID}"
    find_persist || no_slot "no stick with an ANKLUME-PERSIST partition${PERSIST_UUID:+ of PARTUUID=$PERSIST_UUID}${ESP_UUID:+ beside the ESP PARTUUID=$ESP_UUID} appeared within $WAIT s: plug the stick in (or fix anklume.persist= in the boot entry) and restart"
    # Also the start of the boot's own work (bench/boot.py times it from here).
    say "found the stick: PERSIST is /dev/$PERSIST_DEV"
    parent_disk "$PERSIST_DEV"
    BOOT_DISK=$DISK
    mount_persist || no_slot "ANKLUME-PERSIST (/dev/$PERSIST_DEV) cannot be mounted: check it with e2fsck from another computer"
    step "PERSIST mounted"
    record_attempt
    redirect_if_needed
    while [ -n "$BOOT" ]; do
        case " $TRIED " in *" $BOOT "*) break ;; esac
        TRIED="$TRIED $BOOT"
        REASON=verity
        open_slot "$BOOT" && break
        if [ "$REASON" = stick-removed ]; then
            wait_for_the_stick_again || no_slot "the stick was removed during the copy to RAM and did not come back within $WAIT s: plug it in and restart"
            TRIED=${TRIED% "$BOOT"}  # the same slot again, from the stick
            continue
        fi
        fall_through "$BOOT" "$REASON"
        redirect_if_needed
    done
    grep -q " $RUN/lower " /proc/mounts || no_slot "both slots failed their checks"
    step "slot $BOOT's squashfs mounted"
    unmount_persist
    step "PERSIST unmounted"
    [ "$TORAM" = 1 ] && say "[OK] OS copied to RAM, USB can be safely removed"
    say "slot $BOOT opened through dm-verity ($VERITY, root hash ${ROOT_HASH%"${ROOT_HASH#????????????}"}...)"
    mount_root "$rootmnt" || no_slot "the root overlay could not be mounted"
    step "root overlay mounted"
    RAM_CRYPT=$(ram_crypt_state)
    [ "$RAM_CRYPT_WANTED" = 1 ] && say "memory encryption: $RAM_CRYPT"
    write_handoff
    step "hand-off written"
    prepare_shutdown
    step "done: the shutdown half is ready"
    return 0
}

main "$@"
