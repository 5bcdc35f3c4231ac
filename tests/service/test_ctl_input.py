"""anklumectl's own bad input: one sentence and a documented exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

from anklumectl.data import SECRET_FILE_MAX
from anklumectl.main import EXIT_CODES
from tests.service.conftest import Sim

REPO = Path(__file__).resolve().parents[2]


def big_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def test_bad_input_to_anklumectl_gets_a_sentence(sim: Sim, tmp_path: Path) -> None:
    (tmp_path / "a-dir").mkdir()
    cases = [
        (("wait", "not a path"), "Usage", "'not a path' is not a job"),
        (("cancel", "/org/anklume/Live1/job/x"), "Usage", "is not a job"),
        (("wait", "999"), "NotFound", "no such job"),
        (("wait", "/org/anklume/Live1/job/999"), "NotFound", "no such job"),
        (("data", "passphrase", "--passphrase-file", str(tmp_path / "none")), "NotFound",
         "no passphrase file at"),
        (("data", "passphrase", "--passphrase-file", str(tmp_path / "a-dir")),
         "InvalidArgument", "cannot be read (Is a directory)"),
        (("data", "passphrase", "--passphrase-file",
          str(big_file(tmp_path / "huge", 100 << 20))), "InvalidArgument",
         f"is larger than {SECRET_FILE_MAX} bytes"),
    ]
    wrong = []
    for args, error, says in cases:
        proc = sim.ctl("--no-ask-password", *args)
        if proc.returncode != EXIT_CODES[error] or says not in proc.stderr \
                or "Traceback" in proc.stderr or proc.stderr.count("\n") != 1:
            wrong.append(f"{args}: {proc.returncode} {proc.stderr!r}")
    assert not wrong, "\n".join(wrong)
