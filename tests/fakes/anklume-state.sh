#!/bin/sh
# FAKE (replaced by decide's initramfs/anklume-state.sh): a small stand-in with
# the same interface, so the boot can be built and tested before the real one
# lands. It follows DESIGN.md §3 for the cases the boot tests use; the real
# script is the one checked against spec/boot-selection.tsv. The initramfs
# build uses initramfs/anklume-state.sh when it exists and says loudly when it
# falls back to this one.
#
#   decide DIR [CMDLINE_FILE] | record DIR [CMDLINE_FILE]
#   fallthrough DIR FAILED_SLOT REASON | slot-info DIR SLOT
set -u

trim() { tr -d ' \t\r\n' < "$1" 2>/dev/null; }

meta_value() {  # meta_value DIR SLOT KEY
    sed -n "s/^$3=//p" "$1/slots/$2.meta" 2>/dev/null | head -n 1 | tr -d ' \r'
}

status() {
    case "$(meta_value "$1" "$2" STATUS)" in ok|OK) echo ok ;; *) echo bad ;; esac
}

other() { [ "$1" = A ] && echo B || echo A; }

decide() {
    dir=$1
    s=$(trim "$dir/ab-state" | tr ab AB)
    case "$s" in A|B) ;; *) s=A ;; esac
    n=$(sed 's/[^0-9]//g' "$dir/boot-count" 2>/dev/null | head -c 4)
    n=${n:-0}; n=$((n + 0))
    N=$(sed 's/[^0-9]//g' "$dir/boot-attempts" 2>/dev/null | head -c 3)
    N=${N:-3}; N=$((N + 0)); [ "$N" -ge 1 ] || N=3
    t=$(other "$s")
    boot=$s ab=$s count=$((n + 1)) reason="" degraded=0
    if [ "$n" -ge "$N" ]; then
        if [ "$(status "$dir" "$t")" = ok ]; then
            boot=$t ab=$t count=1 reason=boot-count
        else
            degraded=1
        fi
    elif [ "$(status "$dir" "$s")" != ok ] && [ "$(status "$dir" "$t")" = ok ]; then
        boot=$t ab=$t count=1 reason="slot-$(meta_value "$dir" "$s" STATUS)"
    fi
    echo "BOOT=$boot"; echo "AB_STATE=$ab"; echo "BOOT_COUNT=$count"
    echo "ROLLBACK_REASON=$reason"; echo "DEGRADED=$degraded"
}

write_atomic() {  # write_atomic DIR NAME TEXT
    printf '%s\n' "$3" > "$1/$2.tmp" && sync "$1/$2.tmp" 2>/dev/null
    mv "$1/$2.tmp" "$1/$2" && sync "$1" 2>/dev/null
}

record() {
    out=$(decide "$1")
    echo "$out"
    ab=$(echo "$out" | sed -n 's/^AB_STATE=//p')
    count=$(echo "$out" | sed -n 's/^BOOT_COUNT=//p')
    reason=$(echo "$out" | sed -n 's/^ROLLBACK_REASON=//p')
    write_atomic "$1" boot-count "$count" || exit 1
    write_atomic "$1" ab-state "$ab" || exit 1
    if [ -n "$reason" ]; then
        write_atomic "$1" last-rollback "FROM=$(other "$ab")
TO=$ab
REASON=$reason" || exit 1
    fi
}

fallthrough() {
    t=$(other "$2")
    if [ "$(status "$1" "$t")" != ok ]; then
        echo "BOOT="; echo "DEGRADED=1"
        return 0
    fi
    write_atomic "$1" boot-count 1 && write_atomic "$1" ab-state "$t" \
        && write_atomic "$1" last-rollback "FROM=$2
TO=$t
REASON=$3" || exit 1
    echo "BOOT=$t"; echo "AB_STATE=$t"; echo "BOOT_COUNT=1"
    echo "ROLLBACK_REASON=$3"; echo "DEGRADED=0"
}

slot_info() {
    for key in STATUS SIZE ROOT_HASH SALT DATA_BLOCK_SIZE HASH_BLOCK_SIZE HASH_ALG VERSION; do
        echo "$key=$(meta_value "$1" "$2" "$key")"
    done
}

case "${1:-}" in
    decide) decide "$2" ;;
    record) record "$2" ;;
    fallthrough) fallthrough "$2" "$3" "$4" ;;
    slot-info) slot_info "$2" "$3" ;;
    *) echo "usage: $0 decide|record|fallthrough|slot-info DIR ..." >&2; exit 2 ;;
esac
