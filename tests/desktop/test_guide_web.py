"""The guide's web mode in a real browser (headless Chromium, as the session's
user): the one-time link, the cookie and the websocket pass the guard, and a
guide session starts; the link is spent afterwards."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.desktop_session import REPO, DesktopSession
from tests.service.conftest import Sim


@pytest.fixture
def user() -> Iterator[DesktopSession]:
    if shutil.which("chromium") is None:
        pytest.fail("chromium is missing: run ./setup-dev --tests")
    workdir = Path(tempfile.mkdtemp(prefix="anklume-web-"))
    workdir.chmod(0o755)
    s = DesktopSession(workdir).prepare()
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def guide_sessions(uid: int) -> set[int]:
    """The guide processes textual-serve started for a browser (not the server)."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.stat().st_uid != uid:
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [b"-m", b"anklume_desktop.guide", b""]:
            found.add(int(proc.name))
    return found


def test_chromium_opens_the_guide_through_the_guard(sim: Sim, user: DesktopSession) -> None:
    log = user.workdir / "guide.log"
    user.spawn("guide", [sys.executable, "-m", "anklume_desktop.guide", "--web", "--no-browser",
                         "--bus", sim.bus.address], cwd=REPO)
    user.wait_for(lambda: "http://127.0.0.1:" in log.read_text(), "the guide's link")
    found = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", log.read_text())
    assert found is not None
    url = found.group(0)

    started = time.monotonic()
    browser = subprocess.Popen(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={user.runtime}/chromium", "--window-size=1000,700",
         "--virtual-time-budget=6000", f"--screenshot={user.runtime}/shot.png", url],
        env=user.env, cwd=user.runtime, user=user.user.pw_uid, group=user.user.pw_gid,
        extra_groups=[], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    seen: set[int] = set()
    while browser.poll() is None and time.monotonic() - started < 60:
        seen |= guide_sessions(user.user.pw_uid)
        time.sleep(0.05)
    assert browser.wait(5) == 0
    print(f"headless chromium, link to screenshot: {time.monotonic() - started:.2f} s")
    assert seen, "no guide session started: the browser did not get through the guard"
    assert (user.runtime / "shot.png").stat().st_size > 0

    port = url.split(":")[2].split("/")[0]
    with pytest.raises(urllib.error.HTTPError) as spent:
        urllib.request.urlopen(url, timeout=10)  # noqa: S310 - our own loopback URL
    assert spent.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as bare:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
    assert bare.value.code == 403
    assert "token=" not in log.read_text().replace(url, "")  # the link only where printed
