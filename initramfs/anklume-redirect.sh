#!/bin/sh
# anklume-redirect.sh: asks systemd-boot to start one given boot entry at the
# next boot, through its one-shot EFI variable (docs/boot-chain.md, "The
# redirect"). It reads and writes efivarfs only: it mounts nothing, reboots
# nothing and never touches PERSIST (anklume-boot.sh does the rest).
#
#   anklume-redirect.sh entry EFIVARS SLOT TORAM   # prints the boot loader's id of an entry
#                                                  # that starts SLOT's own UKI; exit 1: none
#   anklume-redirect.sh set   EFIVARS ENTRY        # LoaderEntryOneShot=ENTRY, read back;
#                                                  # exit 1 and one sentence on stderr
#   anklume-redirect.sh clear EFIVARS              # LoaderEntryOneShot removed
#   anklume-redirect.sh get   EFIVARS NAME         # a string variable of systemd-boot's
#
# EFIVARS is where efivarfs is mounted (/sys/firmware/efi/efivars); the
# tests give a directory standing for it. Variables of systemd-boot's Boot
# Loader Interface (https://systemd.io/BOOT_LOADER_INTERFACE/): a file
# NAME-GUID holding 4 bytes of attributes (little-endian) then the value, here
# a UTF-16LE string ending in a NUL. LoaderEntries lists the entries the boot
# loader found this boot (one NUL-terminated id after another); systemd-boot
# reads LoaderEntryOneShot once and deletes it before it boots anything.
set -u
set -f
LC_ALL=C
export LC_ALL

GUID=4a67b082-0a4c-41cf-b6c7-440b29bb8c4f  # systemd-boot's vendor GUID
# NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS: survives the reset,
# readable by the boot loader (what systemd's bootctl writes).
ATTRIBUTES='\007\000\000\000'

fail() {
	echo "anklume-redirect: $*" >&2
	exit 1
}

# strings16 FILE: the UTF-16LE strings of a variable, one a line (a code
# unit beyond ASCII reads as '?': no id of ours has one).
strings16() {
	[ -f "$1" ] || return 1
	# od reads the file from its start and never seeks (efivarfs files
	# cannot: coreutils' tail -c failed on them, "Illegal seek"); awk skips
	# the 4 bytes of attributes. Two processes, not four: each costs at boot.
	od -An -v -tu1 < "$1" | awk '
	{
		for (i = 1; i <= NF; i++) {
			if (++bytes <= 4) continue
			if (!odd) { low = $i; odd = 1; continue }
			odd = 0; unit = low + 256 * $i
			if (unit == 0) { print s; s = ""; n = 0; continue }
			s = s (unit < 128 && unit >= 32 ? sprintf("%c", unit) : "?"); n = 1
		}
	}
	END { if (n) print s }'
}

# The entries that start SLOT's own UKI (boot_entries.py names them), and
# which of them keeps the running boot's toram choice. Never the counted
# default entry (anklume-1-live-x+L-D): a redirect must not spend one of
# the boot loader's tries.
cmd_entry() {
	slot=$(echo "${2:-}" | tr 'AB' 'ab')
	case $slot in a | b) ;; *) fail "entry needs a slot (A or B)." ;; esac
	ids=$(strings16 "$1/LoaderEntries-$GUID") || return 1
	if [ "${3:-0}" = 1 ]; then order="2-slot 3-stick 4-slot"; else order="3-stick 4-slot 2-slot"; fi
	for kind in $order; do
		for id in $ids; do
			# systemd 257 keeps ".conf" in an id; the specification drops it.
			[ "${id%.conf}" = "anklume-$kind-$slot" ] && { echo "$id"; return 0; }
		done
	done
	return 1
}

# unprotect FILE: efivarfs makes the variables it does not know immutable
# (a stray write could brick some firmware); systemd's tools lift the flag
# the same way before they write or delete one.
unprotect() {
	[ -e "$1" ] || return 0
	chattr -i "$1" 2>/dev/null
	rm -f "$1" 2>/dev/null && [ ! -e "$1" ]
}

cmd_set() {
	efivars=$1
	entry=${2:-}
	case $entry in '' | *[!a-z0-9.+_-]*) fail "'$entry' is not a boot entry id." ;; esac
	var=$efivars/LoaderEntryOneShot-$GUID
	[ -d "$efivars" ] || fail "there are no EFI variables ($efivars)."
	tmp=${TMPDIR:-/run}/anklume-oneshot.$$
	{
		printf "$ATTRIBUTES"
		s=$entry
		while [ -n "$s" ]; do
			rest=${s#?}
			printf '%s\000' "${s%"$rest"}"
			s=$rest
		done
		printf '\000\000'
	} > "$tmp" || fail "cannot prepare the variable in ${TMPDIR:-/run}."
	# A variable is set by one write(2) of attributes and value together:
	# efivarfs turns each write into one SetVariable call, so dd writes the
	# whole file as one block. An old value is deleted first (a new file is
	# writable by the descriptor that created it, immutable or not).
	if ! unprotect "$var" ||
		! dd if="$tmp" of="$var" bs="$(wc -c < "$tmp")" count=1 conv=notrunc 2>/dev/null ||
		! cmp -s "$tmp" "$var"; then
		rm -f "$tmp"
		fail "the firmware refused LoaderEntryOneShot (variable store full or read-only?)."
	fi
	rm -f "$tmp"
}

cmd_clear() {
	unprotect "$1/LoaderEntryOneShot-$GUID" ||
		fail "cannot remove LoaderEntryOneShot ($1)."
}

# The first string (read, a builtin, spares head's process).
cmd_get() {
	strings16 "$1/${2:-}-$GUID" | { IFS= read -r first && printf '%s\n' "$first"; :; }
}

main() {
	cmd=${1:-}
	efivars=${2:-}
	if [ -z "$efivars" ]; then
		echo "usage: anklume-redirect.sh entry EFIVARS SLOT TORAM | set EFIVARS ENTRY | clear EFIVARS | get EFIVARS NAME" >&2
		return 2
	fi
	shift 2
	case $cmd in
	entry) cmd_entry "$efivars" "$@" ;;
	set) cmd_set "$efivars" "$@" ;;
	clear) cmd_clear "$efivars" ;;
	get) cmd_get "$efivars" "$@" ;;
	*) echo "anklume-redirect: unknown command '$cmd' (entry, set, clear, get)." >&2; return 2 ;;
	esac
}

main "$@"
