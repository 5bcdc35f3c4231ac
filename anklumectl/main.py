"""``anklumectl``: status and control of anklume Live from a terminal.

Exit codes (stable, for scripts):
  0 success            1 failed             2 usage error
  3 not authorized     4 invalid argument   5 not found
  6 busy               7 daemon unreachable 8 verification failed
  9 wrong passphrase  10 boot device refused 11 cancelled
 12 boot check failed (boot-check only)
 13 anklumed lacks what the command needs (anklumectl and anklumed differ)
 14 the connection to anklumed was lost during the call
130 interrupted (Ctrl-C)
Each failure is one sentence on standard error, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable

from dbus_fast import Variant
from rich.console import Console

from anklume_client.errors import ExitCode, daemon_error
from anklume_client.proxies import Job, Manager
from anklume_client.words import explain
from anklumectl import data
from anklumectl.client import Client, ClientError, polkit_agent
from anklumectl.jobs import follow_job, job_props
from anklumectl.local_bundle import open_bundle
from anklumectl.render import slots_table, status_panel

# By the error's short name (the daemon's, or the client's own): for scripts
# and tests; every code is an ExitCode (docs/cli.md).
EXIT_CODES = {
    "Failed": 1, "Usage": 2, "NotAuthorized": 3, "InvalidArgument": 4, "NotFound": 5, "Busy": 6,
    "Unreachable": 7, "VerificationFailed": 8, "IncorrectPassphrase": 9,
    "RefusedBootDevice": 10, "Cancelled": 11, "Incompatible": 13, "Disconnected": 14,
}
BOOT_CHECK_FAILED = ExitCode.BOOT_CHECK_FAILED
__all__ = ["EXIT_CODES", "explain", "main", "parser"]


Action = Callable[[Client, argparse.Namespace, Console], Awaitable[int]]


async def cmd_status(c: Client, a: argparse.Namespace, out: Console) -> int:
    status, data_disk = await asyncio.gather(c.status(), data.data_summary(c))
    status["Data"] = data_disk
    if a.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        out.print(status_panel(status))
    return 0


async def cmd_slots(c: Client, a: argparse.Namespace, out: Console) -> int:
    status = await c.status()
    if a.json:
        print(json.dumps(status["Slots"], indent=2, sort_keys=True))
    else:
        out.print(slots_table(status))
    return 0


async def cmd_rollback(c: Client, a: argparse.Namespace, out: Console) -> int:
    slot = await Manager(c).rollback(a.force)
    out.print(f"Slot {slot} will boot next. Reboot to use it.")
    return 0


def accepted_slot(text: str) -> str:
    """The slot a name the daemon accepted stands for ("a" is A). The name is
    sent as typed: the daemon judges it, with the same SlotName.parse."""
    # Here, not at the top: anklumed.stick brings pyudev and pydantic,
    # which the other commands never need.
    from anklumed.stick import SlotName

    slot = SlotName.parse(text)
    return slot.value if slot is not None else text


async def cmd_set_primary(c: Client, a: argparse.Namespace, out: Console) -> int:
    await Manager(c).set_primary(a.slot, a.force)
    out.print(f"Slot {accepted_slot(a.slot)} will boot next.")
    return 0


async def cmd_mark_good(c: Client, a: argparse.Namespace, out: Console) -> int:
    await Manager(c).mark_good()
    out.print("This boot is marked good.")
    return 0


async def cmd_mark_bad(c: Client, a: argparse.Namespace, out: Console) -> int:
    await Manager(c).mark_bad(a.slot)
    out.print(f"Slot {accepted_slot(a.slot)} is marked failed.")
    return 0


async def cmd_boot_check(c: Client, a: argparse.Namespace, out: Console) -> int:
    """Health gate before boot-complete.target: the daemon answers and is not degraded."""
    props = await Manager(c).properties()
    props.need("BootState", purpose="boot-check")
    if props["BootState"] == "degraded":
        reasons = "; ".join(props["StateReasons"]) or "no reason given"
        print(f"anklumectl: boot check failed: {reasons}", file=sys.stderr)
        return BOOT_CHECK_FAILED
    out.print(f"boot check passed: slot {props['BootedSlot'] or '?'}, {props['BootState']}")
    return 0


def is_url(source: str) -> bool:
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme.replace("+", "").replace(".", "").replace("-", "").isalnum()


async def start_update(c: Client, a: argparse.Namespace) -> str:
    """A URL is given as it is; a local bundle is opened here and passed open."""
    if is_url(a.source):
        job = await Manager(c).update(a.source, a.verify_hash or "", a.allow_downgrade)
        return job.path
    with open_bundle(a.source) as bundle:
        fds = [bundle.manifest]
        options = {"name": Variant("s", bundle.name),
                   "verify_hash": Variant("s", a.verify_hash or ""),
                   "allow_downgrade": Variant("b", a.allow_downgrade)}
        for key, fd in (("signature", bundle.signature), ("image", bundle.image)):
            if fd is not None:
                options[key] = Variant("h", len(fds))
                fds.append(fd)
        job = await Manager(c).update_from_files(options, fds)
    return job.path


async def cmd_update(c: Client, a: argparse.Namespace, out: Console) -> int:
    path = await start_update(c, a)
    if a.no_wait:
        out.print(f"Update started: {path} (follow it with: anklumectl wait)")
        return 0
    code = await follow_job(c, path, out)
    if code == 0 and a.reboot:
        out.print("Rebooting into the new system.")
        await c.reboot()
    return code


async def cmd_jobs(c: Client, a: argparse.Namespace, out: Console) -> int:
    status = await c.status()
    for path in status["Jobs"]:
        p = await job_props(c, path)
        done = f"{p['BytesDone']}/{p['BytesTotal']} bytes" if p["BytesTotal"] else ""
        out.print(f"{path}  {p['Kind']}  {p['State']}  {p['Phase']}  {done}  {p['Message']}")
    return 0


JOB_PREFIX = "/org/anklume/Live1/job/"


def job_arg(value: str | None) -> str | None:
    """A job as given: its path, or its number."""
    if value is None:
        return None
    if value.isdigit():
        return JOB_PREFIX + str(int(value))
    if value.startswith(JOB_PREFIX) and value[len(JOB_PREFIX):].isdigit():
        return value
    raise ClientError("Usage", f"{value[:80]!r} is not a job: give its number or its path "
                      f"({JOB_PREFIX}N, see anklumectl jobs)")


async def cmd_wait(c: Client, a: argparse.Namespace, out: Console) -> int:
    path = job_arg(a.job)
    if path is None:
        jobs = (await c.status())["Jobs"]
        if not jobs:
            out.print("No job.")
            return 0
        path = jobs[-1]
    return await follow_job(c, path, out)


async def cmd_cancel(c: Client, a: argparse.Namespace, out: Console) -> int:
    path = job_arg(a.job)
    if path is None:
        running = [job for job in (await c.status())["Jobs"]
                   if (await job_props(c, job))["State"] == "running"]
        if not running:
            out.print("No job is running.")
            return 0
        path = running[-1]
    if not await Job(c, path).cancel():
        raise daemon_error("InvalidArgument",
                           "too late to cancel: the job has finished or is activating")
    out.print(f"Cancelling {path}.")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="anklumectl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bus", default=os.environ.get("ANKLUME_BUS"),
                   help="D-Bus address (default: the system bus)")
    p.add_argument("--no-ask-password", action="store_true",
                   help="never prompt for authentication")
    p.add_argument("--ask-password", action="store_true",
                   help="allow polkit to ask for a password even without a terminal")
    p.add_argument("--propagate", action="store_true",
                   help="raise errors with a traceback (for debugging and tests)")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Action, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.set_defaults(func=fn)
        return sp

    add("status", cmd_status, "show the boot state").add_argument("--json", action="store_true")
    add("slots", cmd_slots, "list the OS slots").add_argument("--json", action="store_true")
    add("rollback", cmd_rollback, "boot the other slot next").add_argument(
        "--force", action="store_true", help="even if it is not marked ok")
    sp = add("set-primary", cmd_set_primary, "choose the slot that boots next")
    sp.add_argument("slot", help="A or B")
    sp.add_argument("--force", action="store_true", help="even if it is not marked ok")
    add("mark-good", cmd_mark_good, "confirm that this boot works")
    add("mark-bad", cmd_mark_bad, "mark a slot as failed").add_argument("slot", help="A or B")
    sp = add("update", cmd_update, "write a new system into the other slot")
    sp.add_argument("source", help="a bundle: the path of its .manifest (or its image)")
    sp.add_argument("--verify-hash", metavar="ROOTHASH", help="the dm-verity root hash to expect")
    sp.add_argument("--allow-downgrade", action="store_true", help="even an older version")
    sp.add_argument("--reboot", action="store_true", help="reboot into it when done")
    sp.add_argument("--no-wait", action="store_true", help="start it and return")
    add("jobs", cmd_jobs, "list running and last jobs")
    add("wait", cmd_wait, "follow a job until it ends").add_argument("job", nargs="?")
    add("cancel", cmd_cancel, "cancel a running job (the last one by default)").add_argument(
        "job", nargs="?")
    add("boot-check", cmd_boot_check, "exit non-zero if the boot is degraded (for systemd)")
    data.add_commands(sub, add)
    return p


async def run(args: argparse.Namespace) -> int:
    out = Console()
    interactive = not args.no_ask_password and (args.ask_password or sys.stdin.isatty())
    client = await Client.connect(args.bus, interactive)
    try:
        with polkit_agent(interactive):
            result: int = await args.func(client, args, out)
            return result
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.propagate:
        # dbus-fast logs a traceback when the bus goes away under it; the
        # error reaches us as a ClientError and is said in one sentence.
        logging.getLogger("dbus_fast").disabled = True
    try:
        return asyncio.run(run(args))
    except ClientError as e:
        if args.propagate:
            raise
        message, code = explain(e)
        print(f"anklumectl: {message}", file=sys.stderr)
        return int(code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except (Exception, asyncio.CancelledError) as e:
        if args.propagate:
            raise
        print(f"anklumectl: failed unexpectedly ({type(e).__name__}: {e}); run it again "
              "with --propagate to see where", file=sys.stderr)
        return int(ExitCode.FAILED)


if __name__ == "__main__":
    sys.exit(main())
