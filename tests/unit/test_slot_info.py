"""``anklume-state.sh slot-info``: the meta fields the boot needs, validated.

An invalid field prints empty; a printed value is what anklumed reads too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from anklumed.slots.model import parse_meta
from anklumed.stick import SlotName

SCRIPT = Path(__file__).resolve().parents[2] / "initramfs" / "anklume-state.sh"
HASH = "3f" * 32
FIELDS = ("STATUS", "VERSION", "SIZE", "ROOT_HASH", "SALT", "DATA_BLOCK_SIZE",
          "HASH_BLOCK_SIZE", "HASH_ALG")
GOOD = (f"STATUS=ok\nVERSION=2.0.0\nSIZE=4096\nROOT_HASH={HASH}\nSALT=ab12\n"
        "DATA_BLOCK_SIZE=4096\nHASH_BLOCK_SIZE=4096\nHASH_ALG=sha256\n")


def slot_info(shell: str, persist: Path) -> dict[str, str]:
    out = subprocess.run([*shell.split(), str(SCRIPT), "slot-info", str(persist), "b"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.mark.parametrize("shell", ["busybox sh", "dash"])
@pytest.mark.parametrize(("meta", "expected"), [
    (GOOD, {"STATUS": "ok", "VERSION": "2.0.0", "SIZE": "4096", "ROOT_HASH": HASH,
            "SALT": "ab12", "DATA_BLOCK_SIZE": "4096", "HASH_BLOCK_SIZE": "4096",
            "HASH_ALG": "sha256"}),
    (GOOD.replace(HASH, HASH.upper()).replace("SALT=ab12", "SALT=-"),
     {"ROOT_HASH": HASH, "SALT": "-"}),
    (GOOD.replace("DATA_BLOCK_SIZE=4096", "DATA_BLOCK_SIZE=4095")
     .replace("HASH_BLOCK_SIZE=4096", "HASH_BLOCK_SIZE=256"),
     {"DATA_BLOCK_SIZE": "", "HASH_BLOCK_SIZE": ""}),
    (GOOD.replace("DATA_BLOCK_SIZE=4096", "DATA_BLOCK_SIZE=04096")
     .replace("SIZE=4096\n", "SIZE=010\n"), {"DATA_BLOCK_SIZE": "4096", "SIZE": "10"}),
    (GOOD.replace("SIZE=4096\n", "SIZE=+12\n"), {"SIZE": ""}),
    (GOOD.replace("SIZE=4096\n", "SIZE=-1\n"), {"SIZE": ""}),
    (GOOD.replace(HASH, "$(touch /tmp/anklume-state-pwned)"), {"ROOT_HASH": ""}),
    (GOOD.replace("HASH_ALG=sha256", "HASH_ALG=`id`"), {"HASH_ALG": ""}),
    (GOOD.replace("SALT=ab12", "SALT=xyz"), {"SALT": ""}),
    (GOOD + "ROOT_HASH=abcd\r\n", {"ROOT_HASH": "abcd"}),  # the last one wins
    (GOOD.replace("STATUS=ok", "STATUS=Pending"), {"STATUS": "pending"}),
    (None, dict.fromkeys(FIELDS, "") | {"STATUS": "empty"}),
])
def test_slot_info(tmp_path: Path, shell: str, meta: str | None,
                   expected: dict[str, str]) -> None:
    persist = tmp_path / "persist"
    (persist / "slots").mkdir(parents=True)
    if meta is not None:
        (persist / "slots" / "B.meta").write_text(meta)
    info = slot_info(shell, persist)
    assert list(info) == list(FIELDS)
    for key, value in expected.items():
        assert info[key] == value, key
    assert not Path("/tmp/anklume-state-pwned").exists()
    # Whatever the shell accepts, anklumed reads the same way.
    parsed, _ = parse_meta(meta, SlotName.B)
    for key, value in info.items():
        if value:
            assert str(getattr(parsed, key.lower())) == value, key
