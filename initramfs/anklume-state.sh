#!/bin/sh
# anklume-state.sh: the boot decision and the boot's writes to PERSIST
# (DESIGN.md §2-3, docs/boot.md). Pure logic and PERSIST writes: it mounts
# nothing and opens no device. Runs under busybox sh (and dash), as a
# program: nothing read from PERSIST is ever sourced or eval'ed, every file
# is parsed, every value validated, and garbage means the documented default.
#
#   anklume-state.sh decide      PERSIST_DIR [CMDLINE_FILE]
#   anklume-state.sh record      PERSIST_DIR [CMDLINE_FILE]
#   anklume-state.sh fallthrough PERSIST_DIR FAILED_SLOT REASON
#   anklume-state.sh slot-info   PERSIST_DIR SLOT
#   anklume-state.sh redirect-mark PERSIST_DIR BOOT AB_STATE BOOT_COUNT ROLLBACK_REASON DEGRADED
#   anklume-state.sh redirect-take PERSIST_DIR [CMDLINE_FILE]
#
# The rule is the same as anklumed/slots/selection.py's; both are checked
# against the raw cases in spec/boot-cases/ (tests/unit/test_boot_cases.py).
set -u
set -f  # no globbing: words from the command line file are data
LC_ALL=C  # bytes, not characters: garbage must not confuse sed or awk
export LC_ALL
umask 022

MAX_FILE_BYTES=65536  # anklumed.persist.MAX_FILE_BYTES: a larger file reads as empty
SHELL_READ_BYTES=4096  # a larger file is read by head and tr (see small_file)
MAX_BOOT_COUNT=9999
DEFAULT_ATTEMPTS=3
MAX_ATTEMPTS=100

# The reasons a slot is left for the other one (docs/boot.md has the table).
FALLTHROUGH_REASONS="signature root-hash verity missing-tree missing-manifest missing-signature short-slot bad-meta mount"

# --- reading: the same bytes-to-text rules as anklumed's reader -------------
#
# anklumed decodes UTF-8 (bad bytes become U+FFFD), splits lines with
# str.splitlines() and trims with str.strip(). Here: NUL becomes '?' (the
# shell cannot hold NUL; both are just "not valid" everywhere), the UTF-8
# forms of Unicode line breaks become newlines and those of Unicode spaces
# become spaces, so a value is valid here exactly when it is there.
#
# Each process costs at boot (~0.1 s in a TCG guest: bench/boot_processes.py
# counts them): the usual boot's path (printable ASCII files) starts none but
# the file reads, the awk of a KEY=value file and the writes. So functions
# set variables instead of printing into a $(...), and the non-ASCII bytes
# below are made only for a file that holds some.
u() { printf "$1"; }
nl='
'
UNICODE=
# Until unicode_bytes, KELVIN matches no value (a value is one line); a value
# holds a non-ASCII byte only after norm's full translation made them.
KELVIN=$nl
unicode_bytes() {
	[ -z "$UNICODE" ] || return 0
	UNICODE=1
	LB=$(u '\034')  # a line break, turned into \n by tr below
	SED_NORM="s/$(u '\302\205')/$LB/g
s/$(u '\342\200\250')/$LB/g
s/$(u '\342\200\251')/$LB/g
s/$(u '\302\240')/ /g
s/$(u '\341\232\200')/ /g
s/$(u '\342\200')[$(u '\200\201\202\203\204\205\206\207\210\211\212\257')]/ /g
s/$(u '\342\201\237')/ /g
s/$(u '\343\200\200')/ /g"
	KELVIN=$(u '\342\204\252')  # lowercases to "k" in Python: "O<KELVIN>" is "ok" there
}

# norm FILE: NORM gets the file's text, normalised (trailing newlines
# dropped: no reader here tells them apart); nothing for a missing, oversized
# or non-regular file (anklumed reports those and uses the default too).
norm() {
	NORM=
	[ -f "$1" ] || return 0
	small_file "$1" && return 0
	# One byte more than the limit tells an oversized file; the "." keeps
	# trailing newlines from $(...), so the length is the file's.
	raw=$(head -c $((MAX_FILE_BYTES + 1)) < "$1" 2>/dev/null | tr '\000' '?'; echo .)
	raw=${raw%.}
	[ "${#raw}" -le "$MAX_FILE_BYTES" ] || return 0
	case $raw in
	*[!\ -~$nl]*)  # control or non-ASCII bytes: the full translation
		unicode_bytes
		NORM=$(printf '%s' "$raw" | sed -e "$SED_NORM" |
			tr '\011\013\014\015\034\035\036\037' ' \n\n\n\n\n\n ') ;;
	*) NORM=$raw ;;  # the usual file: printable ASCII lines
	esac
}

# sizes FILE...: SIZES gets "BYTES PATH" lines of those of the files that
# are regular, from one stat for all, for small_file.
sizes() {
	for sized; do
		shift
		[ -f "$sized" ] && set -- "$@" "$sized"
	done
	SIZES=
	[ "$#" -eq 0 ] || SIZES=$(stat -L -c '%s %n' -- "$@" 2>/dev/null)
}
SIZES=

# small_file FILE: NORM gets the text of a file that sizes measured, when it
# is small printable ASCII, read by the shell's read: no process. The shell
# cannot hold a NUL and read drops it silently: the text is taken only when
# its length is the file's size, so no byte was dropped; anything else is
# left to norm's head and tr (status 1). Small: a long file of short lines
# would cost the shell quadratic copies.
small_file() {
	size=
	while IFS= read -r line; do
		[ "${line#* }" = "$1" ] && { size=${line%% *}; break; }
	done <<EOF
$SIZES
EOF
	case $size in '' | *[!0-9]*) return 1 ;; esac
	[ "${#size}" -le ${#SHELL_READ_BYTES} ] && [ "$size" -le $SHELL_READ_BYTES ] || return 1
	raw= line=
	while IFS= read -r line; do raw=$raw$line$nl; done 2>/dev/null < "$1"
	raw=$raw$line
	[ "${#raw}" = "$size" ] || return 1
	case $raw in *[!\ -~$nl]*) return 1 ;; esac
	NORM=$raw
}

# value FILE: VALUE gets a one-value file (ab-state, boot-count), without the
# spaces and newlines around it. A newline left inside makes it invalid, as
# in anklumed.
value() {
	norm "$1"
	VALUE=${NORM#"${NORM%%[! $nl]*}"}
	VALUE=${VALUE%"${VALUE##*[! $nl]}"}
}

# kv_load FILE: KV gets the file's valid KEY=value pairs, one a line, the
# last of each key (keys are case-insensitive: upper-cased here), one pair
# of quotes dropped from a value; KV_N the number of valid lines.
kv_load() {
	norm "$1"
	if [ -z "$NORM" ]; then  # what awk makes of no text
		KV=0 KV_N=0
		return
	fi
	case $NORM in
	*[!\ -~$nl]*) ;;
	*) [ "${#NORM}" -gt $SHELL_READ_BYTES ] || { kv_parse; return; } ;;
	esac
	KV=$(awk '
	{
		line = $0; sub(/^ +/, "", line); sub(/ +$/, "", line)
		if (line == "" || substr(line, 1, 1) == "#") next
		i = index(line, "="); if (!i) next
		k = substr(line, 1, i - 1); v = substr(line, i + 1)
		sub(/ +$/, "", k); sub(/^ +/, "", v)
		if (k !~ /^[A-Za-z0-9_]+$/ || k !~ /[A-Za-z0-9]/) next
		q = substr(v, 1, 1)
		if (length(v) >= 2 && (q == "\"" || q == "\047") && substr(v, length(v), 1) == q)
			v = substr(v, 2, length(v) - 2)
		n++; val[toupper(k)] = v
	}
	END { print n + 0; for (k in val) print k "=" val[k] }' <<EOF
$NORM
EOF
)
	KV_N=${KV%%"$nl"*}
}

# kv_parse: kv_load's awk, by the shell, for a small printable ASCII text
# (no process; a long one would cost the shell quadratic copies). KV holds
# every valid pair in order: kv takes the last of a key.
kv_parse() {
	KV_N=0 KV=
	while IFS= read -r line; do
		line=${line#"${line%%[! ]*}"}
		line=${line%"${line##*[! ]}"}
		case $line in '' | '#'*) continue ;; *=*) ;; *) continue ;; esac
		k=${line%%=*} v=${line#*=}
		k=${k%"${k##*[! ]}"}
		v=${v#"${v%%[! ]*}"}
		case $k in '' | *[!A-Za-z0-9_]*) continue ;; esac
		case $k in *[A-Za-z0-9]*) ;; *) continue ;; esac
		case $v in \"*\" | \'*\') v=${v#?}; v=${v%?} ;; esac
		upper "$k"
		KV_N=$((KV_N + 1)) KV=$KV$nl$UPPER=$v
	done <<EOF
$NORM
EOF
	KV=$KV_N$KV
}

# upper TEXT: UPPER gets TEXT with its ASCII letters upper-cased.
upper() {
	UPPER=$1
	case $UPPER in *[abcdefghijklmnopqrstuvwxyz]*) ;; *) return 0 ;; esac
	s=$1 UPPER=
	while [ -n "$s" ]; do
		c=${s%"${s#?}"} s=${s#?}
		case $c in
		a) c=A ;; b) c=B ;; c) c=C ;; d) c=D ;; e) c=E ;; f) c=F ;; g) c=G ;;
		h) c=H ;; i) c=I ;; j) c=J ;; k) c=K ;; l) c=L ;; m) c=M ;; n) c=N ;;
		o) c=O ;; p) c=P ;; q) c=Q ;; r) c=R ;; s) c=S ;; t) c=T ;; u) c=U ;;
		v) c=V ;; w) c=W ;; x) c=X ;; y) c=Y ;; z) c=Z ;;
		esac
		UPPER=$UPPER$c
	done
}

# kv KEY: KV_VALUE gets the value of KEY in the file last loaded, the last
# one (nothing and status 1 when absent).
kv() {
	KV_VALUE= found=1
	while IFS= read -r line; do
		case $line in "$1="*) KV_VALUE=${line#*=} found=0 ;; esac
	done <<EOF
$KV
EOF
	return $found
}

# count TEXT DEFAULT LOW HIGH: COUNT gets a whole number (decimal: "010" is
# 10, never octal) within bounds, else DEFAULT and status 1.
count() {
	c=$1
	COUNT=$2
	case $c in '' | *[!0-9]*) return 1 ;; esac
	while [ "${c#0}" != "$c" ]; do c=${c#0}; done
	c=${c:-0}
	# Length first: a huge number must not overflow the shell's arithmetic.
	if [ "${#c}" -gt "${#4}" ] || [ "$c" -lt "$3" ] || [ "$c" -gt "$4" ]; then
		return 1
	fi
	COUNT=$c
}

# slot_name TEXT: SLOT_NAME gets A or B, else nothing and status 1.
slot_name() {
	case $1 in a | A) SLOT_NAME=A ;; b | B) SLOT_NAME=B ;; *) SLOT_NAME=; return 1 ;; esac
}

# other SLOT: OTHER_SLOT gets the other one.
other() { if [ "$1" = A ]; then OTHER_SLOT=B; else OTHER_SLOT=A; fi; }

problem() { PROBLEMS="${PROBLEMS}PROBLEM=$1$nl"; }

# status SLOT: sets ST to ok, pending, failed or empty. A meta whose STATUS
# is missing or invalid is "failed" (never a rollback target), "empty" when
# it holds no valid line at all.
status() {
	kv_load "$PERSIST/slots/$1.meta"
	if kv STATUS; then
		ST=$KV_VALUE
		case $ST in  # case-insensitive, as anklumed's value.lower()
		[oO][kK] | [oO]"$KELVIN") ST=ok; return ;;
		[pP][eE][nN][dD][iI][nN][gG]) ST=pending; return ;;
		[fF][aA][iI][lL][eE][dD]) ST=failed; return ;;
		[eE][mM][pP][tT][yY]) ST=empty; return ;;
		esac
	fi
	if [ "$KV_N" -gt 0 ]; then
		problem "slots/$1.meta: STATUS is missing or invalid; treated as failed"
		ST=failed
	else
		ST=empty
	fi
}

# stamp TEXT: STAMP gets TEXT if it is a UTC time as anklumed writes it
# (YYYY-MM-DDTHH:MM:SSZ, fields in range), else nothing. Valid stamps
# compare as strings in time order.
stamp() {
	STAMP=
	case $1 in
	[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z) ;;
	*) return 0 ;;
	esac
	r=${1#?????}
	case ${r%%-*} in 0[1-9] | 1[0-2]) ;; *) return 0 ;; esac
	r=${r#???}
	case ${r%%T*} in 0[1-9] | [12][0-9] | 3[01]) ;; *) return 0 ;; esac
	r=${r#???}
	case ${r%%:*} in [01][0-9] | 2[0-3]) ;; *) return 0 ;; esac
	r=${r#???}
	case ${r%%:*} in [0-5][0-9]) ;; *) return 0 ;; esac
	r=${r#???}
	case ${r%Z} in [0-5][0-9]) ;; *) return 0 ;; esac
	STAMP=$1
}

# meta SLOT: ST and GOOD (the valid LAST_GOOD_AT, or nothing) of a slot.
meta() {
	status "$1"
	kv LAST_GOOD_AT
	stamp "$KV_VALUE"
	GOOD=$STAMP
}

# --- the state and the rule (anklumed/slots/selection.py) -------------------

read_state() {
	PROBLEMS=
	sizes "$PERSIST/ab-state" "$PERSIST/boot-count" "$PERSIST/boot-attempts" \
		"$PERSIST/slots/A.meta" "$PERSIST/slots/B.meta" "$PERSIST/last-rollback"
	# AB_TEXT: the file's value as read, which write_decision compares.
	AB_TEXT=
	if [ -e "$PERSIST/ab-state" ]; then
		value "$PERSIST/ab-state"
		AB_TEXT=$VALUE
		if slot_name "$AB_TEXT"; then
			PRIMARY=$SLOT_NAME
		else
			PRIMARY=A; problem "ab-state must be A or B; slot A assumed"
		fi
	else
		PRIMARY=A; problem "ab-state is missing; slot A assumed"
	fi
	value "$PERSIST/boot-count"
	count "$VALUE" 0 0 $MAX_BOOT_COUNT ||
		[ ! -e "$PERSIST/boot-count" ] || problem "boot-count is invalid; 0 assumed"
	N_COUNT=$COUNT
	value "$PERSIST/boot-attempts"
	count "$VALUE" $DEFAULT_ATTEMPTS 1 $MAX_ATTEMPTS ||
		[ ! -e "$PERSIST/boot-attempts" ] || problem "boot-attempts is invalid; 3 assumed"
	ATTEMPTS=$COUNT
	other "$PRIMARY"
	OTHER=$OTHER_SLOT
	meta "$PRIMARY"; ST_P=$ST; GOOD_P=$GOOD
	meta "$OTHER"; ST_O=$ST; GOOD_O=$GOOD
	# The slot last marked good: the newer valid LAST_GOOD_AT (a tie keeps the
	# primary); none when neither slot has one.
	LAST_GOOD=
	[ -n "$GOOD_P" ] && LAST_GOOD=$PRIMARY
	if [ -n "$GOOD_O" ] && { [ -z "$GOOD_P" ] || [ "$GOOD_O" \> "$GOOD_P" ]; }; then
		LAST_GOOD=$OTHER
	fi
	# The other slot was already given up for the primary (by a rollback or a
	# fall-through) and the primary has not been marked good since: its
	# LAST_GOOD_AT is still the one the rollback recorded. Rolling back again
	# would be the A<->B ping-pong; the boot stays on the last good slot.
	OTHER_TRIED=0
	kv_load "$PERSIST/last-rollback"
	kv FROM; slot_name "$KV_VALUE"
	if [ "$SLOT_NAME" = "$OTHER" ]; then
		kv TO; slot_name "$KV_VALUE"
		if [ "$SLOT_NAME" = "$PRIMARY" ] && kv TO_LAST_GOOD_AT &&
			[ "$KV_VALUE" = "${GOOD_P:-none}" ]; then
			OTHER_TRIED=1
		fi
	fi
}

# decide_from_state [FORCED]: sets BOOT AB_STATE BOOT_COUNT ROLLBACK_REASON DEGRADED.
decide_from_state() {
	forced=${1:-}
	ROLLBACK_REASON=
	DEGRADED=0
	AB_STATE=$PRIMARY
	if [ -n "$forced" ] && [ "$forced" != "$PRIMARY" ]; then
		# A boot-menu choice of the other slot: boot it and leave the
		# primary's state alone (none of its attempts is spent).
		BOOT=$forced; BOOT_COUNT=$N_COUNT
		[ "$ST_O" = ok ] || DEGRADED=1
		return
	fi
	if [ -z "$forced" ] && [ "$ST_O" = ok ]; then
		if [ "$ST_P" != ok ]; then
			rollback "slot-$ST_P"; return
		fi
		if [ "$N_COUNT" -ge "$ATTEMPTS" ] && [ "$OTHER_TRIED" = 0 ]; then
			rollback boot-count; return
		fi
	fi
	BOOT_COUNT=$((N_COUNT + 1))
	[ "$BOOT_COUNT" -le $MAX_BOOT_COUNT ] || BOOT_COUNT=$MAX_BOOT_COUNT
	BOOT=$PRIMARY
	if [ "$N_COUNT" -lt "$ATTEMPTS" ] && [ "$ST_P" = ok ]; then
		return
	fi
	DEGRADED=1
	if [ -z "$forced" ] && [ "$LAST_GOOD" = "$OTHER" ] && [ "$ST_O" = ok ]; then
		BOOT=$OTHER
	fi
}

rollback() {
	BOOT=$OTHER; AB_STATE=$OTHER; BOOT_COUNT=1; ROLLBACK_REASON=$1
}

# cmdline_slot CMDLINE_FILE KEY: CMDLINE_SLOT gets the slot named by the
# last KEY=... word of the kernel command line, if any and valid.
cmdline_slot() {
	CMDLINE_SLOT=
	[ -n "${1:-}" ] && [ -f "$1" ] || return 0
	last=
	for word in $(tr '\000' '?' < "$1"); do
		case $word in "$2="*) last=${word#"$2="} ;; esac
	done
	slot_name "$last" && CMDLINE_SLOT=$SLOT_NAME
	return 0
}

# forced_slot CMDLINE_FILE: FORCED gets the slot a boot-menu entry forces
# (anklume.slot=), or nothing.
forced_slot() {
	cmdline_slot "${1:-}" anklume.slot
	FORCED=$CMDLINE_SLOT
}

print_decision() {
	printf 'BOOT=%s\nAB_STATE=%s\nBOOT_COUNT=%s\nROLLBACK_REASON=%s\nDEGRADED=%s\nLAST_GOOD=%s\n' \
		"$BOOT" "$AB_STATE" "$BOOT_COUNT" "$ROLLBACK_REASON" "$DEGRADED" "$LAST_GOOD"
	printf '%s' "$PROBLEMS"
}

# --- writing ----------------------------------------------------------------
#
# Each file is replaced atomically, as anklumed.persist does:
#   1. write NAME.tmp   (shell redirection: open O_CREAT|O_TRUNC, write)
#   2. fsync NAME.tmp   (`sync FILE`: Debian 12's busybox 1.35 has no fsync
#                        applet, but its `sync [-df] FILE...` calls fsync(2)
#                        on each FILE (strace: tests/unit/test_boot_power_cut.py);
#                        coreutils' sync does the same. A busybox built
#                        without FEATURE_SYNC_FANCY ignores FILE and calls
#                        sync(2), which flushes everything: slower, as durable.
#                        Debian 13's busybox 1.37 is not checked here.)
#   3. rename over NAME (`mv -f`: rename(2) on the same filesystem)
#   4. fsync the directory (`sync DIR`: fsync(2) on the directory's fd makes
#                        the rename itself durable)
# A power cut leaves NAME old or new, never half-written; a NAME.tmp left
# behind is ignored here and removed by anklumed.
put() {
	f=$PERSIST/$1
	# mv onto a directory would move the file into it: refuse instead.
	[ ! -d "$f" ] &&
		printf '%s\n' "$2" > "$f.tmp" 2>/dev/null &&
		sync "$f.tmp" 2>/dev/null &&
		mv -f "$f.tmp" "$f" 2>/dev/null &&
		sync "$PERSIST" 2>/dev/null && return 0
	rm -f "$f.tmp" 2>/dev/null
	echo "anklume-state: could not write $1 on PERSIST ($PERSIST); the boot goes on but this attempt may not be counted." >&2
	return 1
}

# write_decision FROM: writes what the decision changed, in the order that
# leaves a valid state after a power cut between any two steps:
#   1. last-rollback: alone, it changes no decision (it only matters once
#      ab-state names its TO slot), so a cut here redoes the rollback;
#   2. boot-count (1 on a rollback): a cut here boots the old primary again
#      with a fresh count, never the new one with the old one's attempts
#      (the order of anklumed.slots.model.write_primary);
#   3. ab-state.
write_decision() {
	if [ -n "$ROLLBACK_REASON" ] && [ "$AB_STATE" != "$1" ]; then
		put last-rollback "FROM=$1
TO=$AB_STATE
AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
REASON=$ROLLBACK_REASON
TO_LAST_GOOD_AT=${GOOD_O:-none}" || return 1
	fi
	if [ "$BOOT_COUNT" != "$N_COUNT" ] || [ ! -f "$PERSIST/boot-count" ]; then
		put boot-count "$BOOT_COUNT" || return 1
	fi
	if [ "$AB_STATE" != "$1" ] || [ "$AB_TEXT" != "$AB_STATE" ]; then
		put ab-state "$AB_STATE" || return 1
	fi
	return 0
}

# --- subcommands --------------------------------------------------------------

cmd_decide() {
	read_state
	forced_slot "${1:-}"
	decide_from_state "$FORCED"
	print_decision
}

cmd_record() {
	read_state
	forced_slot "${1:-}"
	forced=$FORCED
	decide_from_state "$forced"
	rc=0
	if [ -n "$forced" ] && [ "$BOOT" != "$PRIMARY" ]; then
		:  # a menu choice of the other slot changes nothing on PERSIST
	else
		write_decision "$PRIMARY" || rc=1
	fi
	print_decision
	return $rc
}

# The slot about to boot failed a check. The other slot boots when it is ok.
# Only a failure of the primary moves ab-state: when the failed slot was not
# the primary (a boot-menu choice with anklume.slot=, or a degraded boot of
# the last good slot), the primary boots and nothing is written.
cmd_fallthrough() {
	slot_name "${1:-}" || { echo "anklume-state: fallthrough needs the slot that failed (A or B)." >&2; return 2; }
	failed=$SLOT_NAME
	reason=${2:-}
	read_state
	case " $FALLTHROUGH_REASONS " in
	*" $reason "*) ;;
	*) problem "unknown fall-through reason '$reason'"; reason=check-failed ;;
	esac
	ROLLBACK_REASON=$reason
	BOOT_COUNT=$N_COUNT
	AB_STATE=$PRIMARY
	other "$failed"
	target=$OTHER_SLOT
	if [ "$target" = "$PRIMARY" ]; then ST=$ST_P; else ST=$ST_O; fi
	if [ "$ST" != ok ]; then
		BOOT=; DEGRADED=1; print_decision; return 0
	fi
	if [ "$failed" != "$PRIMARY" ]; then
		BOOT=$target; DEGRADED=1; print_decision; return 0
	fi
	if [ "$OTHER_TRIED" = 1 ]; then
		# The other slot was given up for this one and it has not booted
		# well since: nothing is left to try.
		BOOT=; DEGRADED=1; print_decision; return 0
	fi
	BOOT=$target; AB_STATE=$target; BOOT_COUNT=1; DEGRADED=0
	rc=0
	write_decision "$PRIMARY" || rc=1
	print_decision
	return $rc
}

# --- the redirect (docs/boot-chain.md) -----------------------------------------
#
# A boot that decided a slot whose kernel is not the one running asks the
# boot loader for that slot's own entry and restarts at once. Its decision
# (already written, its attempt counted) goes to PERSIST's `redirect` first,
# so that the boot it restarts into takes that decision instead of counting
# the same attempt again. Every boot removes the file it finds, before it
# uses it; a boot that found one never redirects (anklume-boot.sh): so no two
# boots in a row redirect, and the chain always ends.

cmd_redirect_mark() {
	slot_name "${1:-}" && slot=$SLOT_NAME &&
		slot_name "${2:-}" && ab=$SLOT_NAME &&
		count "${3:-}" '' 0 $MAX_BOOT_COUNT && n=$COUNT &&
		case ${5:-} in 0 | 1) ;; *) false ;; esac &&
		case ${4:-} in *[!a-z-]*) false ;; esac || {
		echo "anklume-state: redirect-mark needs BOOT AB_STATE BOOT_COUNT ROLLBACK_REASON DEGRADED." >&2
		return 2
	}
	put redirect "SLOT=$slot
AB_STATE=$ab
BOOT_COUNT=$n
ROLLBACK_REASON=${4:-}
DEGRADED=$5"
}

# Prints REDIRECT=none (no file), landed (this boot runs the kernel the
# previous boot asked for and PERSIST is as it left it: its decision
# follows, nothing is counted), missed (another kernel runs: the firmware
# ignored the request, or the boot it started died before its initramfs),
# stale (PERSIST changed since, or the file is garbage), stuck (the file
# could not be removed: exit 1).
cmd_redirect_take() {
	f=$PERSIST/redirect
	if [ ! -e "$f" ]; then
		echo REDIRECT=none
		return 0
	fi
	kv_load "$f"
	kv SLOT; slot_name "$KV_VALUE"; m_slot=$SLOT_NAME
	kv AB_STATE; slot_name "$KV_VALUE"; m_ab=$SLOT_NAME
	kv BOOT_COUNT; count "$KV_VALUE" '' 0 $MAX_BOOT_COUNT; m_count=$COUNT
	kv ROLLBACK_REASON; m_reason=$KV_VALUE
	kv DEGRADED; m_degraded=$KV_VALUE
	read_state
	if ! rm -f "$f" 2>/dev/null || [ -e "$f" ] || ! sync "$PERSIST" 2>/dev/null; then
		echo REDIRECT=stuck
		echo "anklume-state: could not remove redirect from PERSIST ($PERSIST); this boot counts its attempt." >&2
		return 1
	fi
	case $m_reason in *[!a-z-]*) m_slot= ;; esac
	case $m_degraded in 0 | 1) ;; *) m_slot= ;; esac
	if [ -z "$m_slot" ] || [ -z "$m_ab" ] || [ -z "$m_count" ]; then
		echo REDIRECT=stale
		return 0
	fi
	cmdline_slot "${1:-}" anklume.kernel
	if [ "$CMDLINE_SLOT" != "$m_slot" ]; then
		printf 'REDIRECT=missed\nSLOT=%s\n' "$m_slot"
		return 0
	fi
	if [ "$PRIMARY" != "$m_ab" ] || [ "$N_COUNT" != "$m_count" ]; then
		echo REDIRECT=stale
		return 0
	fi
	BOOT=$m_slot AB_STATE=$m_ab BOOT_COUNT=$m_count ROLLBACK_REASON=$m_reason DEGRADED=$m_degraded
	echo REDIRECT=landed
	print_decision
}

# The meta's fields the boot needs, validated; an invalid or missing one is
# printed empty, so the boot script never parses a meta itself.
cmd_slot_info() {
	slot_name "${1:-}" || { echo "anklume-state: slot-info needs a slot (A or B)." >&2; return 2; }
	slot=$SLOT_NAME
	PROBLEMS=
	sizes "$PERSIST/slots/$slot.meta"
	status "$slot"
	echo "STATUS=$ST"
	kv VERSION; token "$KV_VALUE"; echo "VERSION=$TOKEN"
	kv SIZE; count "$KV_VALUE" '' 0 999999999999999; echo "SIZE=$COUNT"
	kv ROOT_HASH; hex "$KV_VALUE"; echo "ROOT_HASH=$HEX"
	kv SALT
	if [ "$KV_VALUE" = - ]; then echo "SALT=-"; else hex "$KV_VALUE"; echo "SALT=$HEX"; fi
	kv DATA_BLOCK_SIZE; block "$KV_VALUE"; echo "DATA_BLOCK_SIZE=$BLOCK"
	kv HASH_BLOCK_SIZE; block "$KV_VALUE"; echo "HASH_BLOCK_SIZE=$BLOCK"
	kv HASH_ALG; token "$KV_VALUE"; echo "HASH_ALG=$TOKEN"
}

# hex TEXT: HEX gets TEXT lower-cased if it is hex digits (512 at most), else
# nothing. anklumed writes lower case: tr only for an upper-case letter.
hex() {
	HEX=$1
	case $HEX in *[A-F]*) HEX=$(printf '%s' "$1" | tr 'A-F' 'a-f') ;; esac
	case $HEX in '' | *[!0-9a-f]*) HEX= ;; esac
	[ "${#HEX}" -le 512 ] || HEX=
}

# token TEXT: TOKEN gets TEXT if it is a version or an algorithm's name.
token() {
	TOKEN=
	case $1 in '' | *[!A-Za-z0-9._:+~/@-]*) return 0 ;; esac
	[ "${#1}" -le 200 ] && TOKEN=$1
}

# block TEXT: BLOCK gets a dm-verity block size: a power of two from 512 to 1 MiB.
block() {
	BLOCK=
	count "$1" '' 512 1048576 || return 0
	b=$COUNT
	while [ "$b" -gt 1 ] && [ $((b % 2)) -eq 0 ]; do b=$((b / 2)); done
	[ "$b" = 1 ] && BLOCK=$COUNT
}

main() {
	cmd=${1:-}
	PERSIST=${2:-}
	if [ -z "$PERSIST" ]; then
		echo "usage: anklume-state.sh decide|record PERSIST_DIR [CMDLINE_FILE] | fallthrough PERSIST_DIR SLOT REASON | slot-info PERSIST_DIR SLOT | redirect-mark PERSIST_DIR BOOT AB_STATE BOOT_COUNT ROLLBACK_REASON DEGRADED | redirect-take PERSIST_DIR [CMDLINE_FILE]" >&2
		return 2
	fi
	shift 2
	case $cmd in
	decide) cmd_decide "$@" ;;
	record) cmd_record "$@" ;;
	fallthrough) cmd_fallthrough "$@" ;;
	slot-info) cmd_slot_info "$@" ;;
	redirect-mark) cmd_redirect_mark "$@" ;;
	redirect-take) cmd_redirect_take "$@" ;;
	*) echo "anklume-state: unknown command '$cmd' (decide, record, fallthrough, slot-info, redirect-mark, redirect-take)." >&2; return 2 ;;
	esac
}

main "$@"
