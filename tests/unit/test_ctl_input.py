"""anklumectl's own bad input that needs no daemon: one sentence and a
documented exit code, never a traceback (the rest: tests/service/test_ctl_input.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anklumectl.data import SECRET_FILE_MAX
from anklumectl.main import EXIT_CODES
from devtools.slowness import scaled

REPO = Path(__file__).resolve().parents[2]


def test_a_bus_address_that_is_not_one() -> None:
    proc = subprocess.run([sys.executable, "-m", "anklumectl", "--bus", "garbage", "status"],
                          cwd=REPO, capture_output=True, text=True, timeout=scaled(60), check=False)
    assert proc.returncode == EXIT_CODES["Usage"]
    assert proc.stderr == ("anklumectl: 'garbage' is not a D-Bus address (like "
                           "unix:path=/run/dbus/system_bus_socket): fix --bus\n")


@pytest.mark.parametrize("size", [SECRET_FILE_MAX, SECRET_FILE_MAX + 1])
def test_the_passphrase_file_bound(tmp_path: Path, size: int) -> None:
    from anklumectl.client import ClientError
    from anklumectl.data import read_secret_file

    path = tmp_path / "pw"
    path.write_bytes(b"x" * size)
    if size <= SECRET_FILE_MAX:
        assert read_secret_file(str(path)) == b"x" * size
    else:
        with pytest.raises(ClientError, match="larger than"):
            read_secret_file(str(path))
