"""Call Manager.Update or UpdateFromFiles the way a hostile client could, and
wait for the answer: the method's error, or its job's result.

``python -m tests.service.update_caller USER ADDRESS SOURCE`` calls
Update(SOURCE) as USER (privileges dropped before connecting, as
devtools/as_user.py does) and prints the answer as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys
import time
from typing import Any

from anklumectl.client import MANAGER_IFACE, ROOT_PATH, Client, ClientError
from devtools.slowness import scaled

PREFIX = "org.anklume.Live1.Error."
Answer = tuple[str, str]  # (error name without prefix, or "ok"; message)


JOB_TIMEOUT = 40.0


async def job_answer(c: Client, path: str) -> Answer:
    deadline = time.monotonic() + scaled(JOB_TIMEOUT)
    while time.monotonic() < deadline:
        (props,) = await c.call(path, "org.freedesktop.DBus.Properties", "GetAll", "s",
                                ["org.anklume.Live1.Job"])
        if props["State"] != "running":
            return (props["ErrorName"] or "ok", props["Message"] or props["Result"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} still runs after {JOB_TIMEOUT} s")


async def answer_of(c: Client, member: str, signature: str, body: list[Any],
                    unix_fds: list[int] | None = None) -> Answer:
    try:
        (path,) = await c.call(ROOT_PATH, MANAGER_IFACE, member, signature, body,
                               mutating=True, unix_fds=unix_fds)
    except ClientError as e:
        return (e.name.removeprefix(PREFIX), e.message)
    return await job_answer(c, path)


async def update_path(address: str, source: str, verify_hash: str = "") -> Answer:
    c = await Client.connect(address, False)
    try:
        return await answer_of(c, "Update", "ssb", [source, verify_hash, False])
    finally:
        await c.close()


def main() -> int:
    user = pwd.getpwnam(sys.argv[1])
    os.setgroups([])
    os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
    os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
    print(json.dumps(asyncio.run(update_path(sys.argv[2], sys.argv[3]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
