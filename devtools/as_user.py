"""Run anklumectl as another (unprivileged) user, for tests.

The interpreter starts as root, loads anklumectl, then drops every privilege
before connecting to the bus: the bus sees the target uid (SO_PEERCRED), and
the test does not depend on that user being able to read the virtualenv.
"""

import os
import pwd
import sys


def main() -> int:
    user = pwd.getpwnam(sys.argv[1])
    from anklumectl import main as ctl
    from anklumectl import render  # noqa: F401

    os.setgroups([])
    os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
    os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
    assert os.geteuid() == user.pw_uid
    return ctl.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
