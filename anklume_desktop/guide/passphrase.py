"""The passphrase rule of the guide: typed twice, a warning under 12 characters."""

from __future__ import annotations

from enum import StrEnum

MIN_LENGTH = 12


class Verdict(StrEnum):
    OK = "ok"
    EMPTY = "empty"
    MISMATCH = "mismatch"
    SHORT = "short"  # a warning: usable once the person confirms


def judge(first: str, second: str) -> Verdict:
    if not first:
        return Verdict.EMPTY
    if first != second:
        return Verdict.MISMATCH
    if len(first) < MIN_LENGTH:
        return Verdict.SHORT
    return Verdict.OK


MESSAGES = {
    Verdict.EMPTY: "Type a passphrase.",
    Verdict.MISMATCH: "The two passphrases differ: type them again.",
    Verdict.SHORT: f"This passphrase has fewer than {MIN_LENGTH} characters: it can be "
                   "guessed. Press Start again to use it anyway, or type a longer one.",
    Verdict.OK: "",
}
