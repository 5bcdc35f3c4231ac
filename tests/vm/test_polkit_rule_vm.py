"""The live user's polkit rule (polkit/50-org.anklume.live1.rules), judged by
the real polkitd and logind of the systemd guest.

Sessions are opened through PAM by systemd (``PAMName=login``), as greetd
opens the live user's: one on a VT of seat0 (local; active while its VT is
the foreground one, switched with ``loginctl activate``) and one without a
seat (what an ssh login gets: polkit counts it as not local). A process of
the user is put into a session's scope, then polkitd is asked about it
(``pkcheck``, and anklumectl's calls through the daemon); the rule taken
away, the same session falls back to the defaults. Runs in the same
guest boot as test_systemd.py (same mode): no boot of its own; about 100 s
of that guest at a load of 3.5 on 2 cores (2026-12-02), most of it the
pkcheck processes (about 2 s each under TCG).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from anklume_image import install
from tests.vm.test_systemd import NOT_AUTHORIZED, sh, wait_for

pytestmark = pytest.mark.vm(mode="systemd")
POLICY = Path(__file__).resolve().parents[2] / "polkit" / "org.anklume.live1.policy"
ACTIONS = re.findall(r'<action id="([^"]+)"', POLICY.read_text())
# data-unlock's default lets any active local session ask (the passphrase
# guards the data): the rule changes nothing there for outsiders.
ACTIVE_DEFAULT_YES = {"org.anklume.live1.data-unlock"}
MEMBER, OUTSIDER = "anklume-live-test", "anklume-outsider-test"


@dataclass(frozen=True)
class Session:
    unit: str
    id: str

    def prop(self, name: str) -> str:
        return sh("loginctl", "show-session", self.id, "-p", name, "--value").stdout.strip()

    def procs(self) -> Path:
        group = sh("systemctl", "show", f"session-{self.id}.scope", "-p", "ControlGroup",
                   "--value").stdout.strip()
        return Path("/sys/fs/cgroup") / group.lstrip("/") / "cgroup.procs"

    def run(self, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """``argv`` as ``user``, from inside this session's scope."""
        inside = (f'echo $$ > {self.procs()} && exec setpriv --reuid={user} --regid={user} '
                  f'--init-groups "$@"')
        return sh("sh", "-c", inside, "sh", *argv, check=False)

    def activate(self) -> None:
        sh("loginctl", "activate", self.id)
        wait_for(f"session {self.id} active", lambda: self.prop("Active") == "yes", 30)


def open_session(unit: str, user: str, tty: str | None) -> Session:
    argv = ["systemd-run", f"--unit={unit}", "-p", "PAMName=login", "-p", f"User={user}"]
    if tty:
        argv += ["-p", f"TTYPath={tty}"]
    sh(*argv, "sleep", "infinity")
    found: list[str] = []

    def opened() -> bool:
        """The session whose leader is the unit's process (pam_systemd
        registers the process that opened the PAM session, which then runs
        the command)."""
        pid = sh("systemctl", "show", unit, "-p", "MainPID", "--value").stdout.strip()
        listed = sh("loginctl", "list-sessions", "--no-legend").stdout.split("\n")
        ids = [line.split()[0] for line in listed if line.strip()]
        found[:] = [i for i in ids if pid not in ("", "0") and sh(
            "loginctl", "show-session", i, "-p", "Leader", "--value",
            check=False).stdout.strip() == pid]
        return bool(found)

    try:
        wait_for(f"{user}'s session", opened, 30)
    except AssertionError as e:
        journal = sh("journalctl", "-b", "--no-pager", "-n", "40", check=False).stdout
        raise AssertionError(f"{e}\n{sh('loginctl', check=False).stdout}\n{journal}") from e
    return Session(unit, found[0])


def allowed(session: Session, user: str, action: str) -> bool:
    """polkitd's answer for a process of ``user`` in ``session`` (no agent:
    an answer that needs authentication is a no)."""
    proc = session.run(user, "sh", "-c", 'exec pkcheck --action-id "$0" --process $$', action)
    assert proc.returncode in (0, 1, 2), (action, proc.returncode, proc.stderr)
    return proc.returncode == 0


def answers(session: Session, user: str) -> dict[str, bool]:
    return {action: allowed(session, user, action) for action in ACTIONS}


@pytest.fixture
def users() -> Iterator[None]:
    sh("groupadd", "--system", "-f", install.ADMIN_GROUP)
    sh("useradd", "--create-home", "--groups", install.ADMIN_GROUP, MEMBER)
    sh("useradd", "--create-home", OUTSIDER)
    yield
    for unit in ("anklume-member-vt", "anklume-outsider-vt", "anklume-member-seatless"):
        sh("systemctl", "stop", unit, check=False)
    sh("loginctl", "terminate-user", MEMBER, OUTSIDER, check=False)
    sh("userdel", "--remove", MEMBER, check=False)
    sh("userdel", "--remove", OUTSIDER, check=False)


def test_the_group_acts_from_its_active_local_session_only(users: None) -> None:
    assert len(ACTIONS) == 5
    member = open_session("anklume-member-vt", MEMBER, "/dev/tty5")
    outsider = open_session("anklume-outsider-vt", OUTSIDER, "/dev/tty6")
    assert (member.prop("Seat"), member.prop("VTNr"), member.prop("Remote")) == ("seat0", "5", "no")

    # The outsider's VT in front: the member's session is local, not active.
    outsider.activate()
    assert member.prop("Active") == "no"
    assert answers(member, MEMBER) == {a: False for a in ACTIONS}
    assert answers(outsider, OUTSIDER) == {a: a in ACTIVE_DEFAULT_YES for a in ACTIONS}
    refused = outsider.run(OUTSIDER, "anklumectl", "--no-ask-password", "mark-bad", "B")
    assert refused.returncode == NOT_AUTHORIZED, refused.stderr

    # The member's VT in front: every action, without a password; the call
    # passes polkit and reaches the core (which refuses it on its merits).
    member.activate()
    assert answers(member, MEMBER) == {a: True for a in ACTIONS}
    assert answers(outsider, OUTSIDER) == {a: False for a in ACTIONS}
    through = member.run(MEMBER, "anklumectl", "--no-ask-password", "mark-bad", "B")
    assert through.returncode not in (0, NOT_AUTHORIZED), through.stderr
    assert "slot B is empty" in through.stderr

    # The rule is what grants it: taken away, polkitd (which watches its
    # rules directories) falls back to the defaults for the same session.
    rule = Path("/usr/share/polkit-1/rules.d") / install.POLKIT_RULE
    aside = rule.with_name(rule.name + ".aside")  # polkitd reads *.rules only
    rule.rename(aside)
    try:
        wait_for("polkitd without the rule",
                 lambda: not allowed(member, MEMBER, "org.anklume.live1.update"), 60)
        assert answers(member, MEMBER) == {a: a in ACTIVE_DEFAULT_YES for a in ACTIONS}
    finally:
        aside.rename(rule)
    wait_for("polkitd with the rule again",
             lambda: allowed(member, MEMBER, "org.anklume.live1.update"), 60)

    # The same member from a session without a seat, while its VT session is
    # still the active one: not local, refused.
    seatless = open_session("anklume-member-seatless", MEMBER, None)
    assert seatless.prop("Seat") == ""
    assert answers(seatless, MEMBER) == {a: False for a in ACTIONS}
    refused = seatless.run(MEMBER, "anklumectl", "--no-ask-password", "mark-bad", "B")
    assert refused.returncode == NOT_AUTHORIZED, refused.stderr
