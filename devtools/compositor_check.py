"""The compositors' own verdict on an image's configuration, run in the
image's root tree (its slot's squashfs unpacked): what each refuses, as the
[ERROR] lines it logs. Both exit 0 on a configuration they reject in part,
so the exit status alone says nothing.

- sway: ``sway -C`` checks /etc/sway/config with what it includes.
- labwc has no check option: ``labwc -S true`` starts it on a headless
  backend, where it reads /etc/xdg/labwc (rc.xml, environment), runs its
  autostart and exits when ``true`` does. Its keyboard's keymap goes to a
  shm file, so the tree needs a /dev/shm (an unpacked squashfs has an empty
  /dev): a directory is enough for shm_open. What autostart started (waybar,
  mako, the tray) is in labwc's process group and ends with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

# Headless, drawn by pixman: no GPU, no seat, no display.
HEADLESS_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                "XDG_RUNTIME_DIR": "/tmp", "WLR_BACKENDS": "headless",
                "WLR_RENDERER": "pixman"}


class CompositorFailed(Exception):
    """The compositor did not run to its end (crashed, or exited non-zero)."""


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "[ERROR]" in line]


def _run(root: Path, argv: list[str], timeout: float) -> str:
    proc = subprocess.Popen(["chroot", str(root), *argv], env=HEADLESS_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CompositorFailed(f"{argv[0]} did not exit within {timeout:.0f} s") from None
    finally:
        # autostart's programs, still running after the compositor left
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        raise CompositorFailed(f"{argv[0]} exited {proc.returncode}: {stderr[-2000:]}")
    return stderr


def sway_errors(root: Path, timeout: float = 60) -> list[str]:
    return _errors(_run(root, ["sway", "-C"], timeout))


def labwc_errors(root: Path, timeout: float = 60) -> list[str]:
    shm = root / "dev" / "shm"
    if not shm.is_dir():
        shm.mkdir(parents=True)
        shm.chmod(0o1777)
    return _errors(_run(root, ["labwc", "-S", "true"], timeout))
