"""anklumectl data status|setup|unlock|lock, and first-boot.

Passphrases are read from a terminal (twice for a new one), a file, a
systemd credential or the systemd password agents -- and sent to anklumed
as bytes (D-Bus ``ay``), never on a command line or in the environment.
A passphrase file's one trailing newline is dropped (``echo pw > file``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.prompt import Prompt
from rich.table import Table

from anklume_client.interface import DATA_DISK, DATA_PATH, ERROR_PREFIX, PROPERTIES_IFACE
from anklume_client.models import AdoptableDisk, CandidateDisk
from anklume_client.properties import Properties, complete
from anklume_client.proxies import DataDisk
from anklumectl.client import Client, ClientError
from anklumectl.jobs import follow_job
from anklumectl.render import data_words, human_size

DATA_IFACE = DATA_DISK.name
CREDENTIAL = "anklume-data-passphrase"
DISK_CREDENTIAL = "anklume-data-disk"
# Optional beside the two above: "zfs" or "btrfs". Without it (and without
# --fs) the setup makes the first filesystem anklumed says this system can
# make: ZFS where it works, BTRFS where it does not (DataDisk.Filesystems).
FS_CREDENTIAL = "anklume-data-fs"
FILESYSTEMS = ("zfs", "btrfs")
WEAK_BELOW = 12
ASK_ATTEMPTS = 3
PROBE_WAIT = 30.0  # seconds; probing every disk takes about a second


async def data_props(c: Client) -> Properties:
    """The DataDisk's properties, complete whatever the daemon's revision."""
    (props,) = await c.call(DATA_PATH, PROPERTIES_IFACE, "GetAll", "s", [DATA_IFACE])
    return complete(DATA_DISK, props)


def candidates(props: dict[str, Any]) -> list[CandidateDisk]:
    return [CandidateDisk.from_record(r) for r in props["CandidateDisks"]]


def adoptable(props: dict[str, Any]) -> list[AdoptableDisk]:
    return [AdoptableDisk.from_record(r) for r in props["AdoptableDisks"]]


# What `anklumectl status` shows of the data disk (`data status` has it all).
STATUS_KEYS = ("State", "Pool", "Backend", "Encryption", "Device", "Mounts", "Message", "Pulled")


async def data_summary(c: Client) -> dict[str, Any]:
    props = await data_props(c)
    return {key: props[key] for key in STATUS_KEYS}


async def probed_props(c: Client) -> Properties:
    """The DataDisk properties once anklumed has probed the disks. Right after
    it starts (the first-boot unit runs then) it knows none yet, and an empty
    list must not read as "no disk can hold the data" or "none to adopt"."""
    deadline = time.monotonic() + PROBE_WAIT
    props = await data_props(c)
    while not props["DisksProbed"] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        props = await data_props(c)
    return props


def require_probed(props: dict[str, Any]) -> None:
    """Before saying that no disk fits: make sure the disks were looked at."""
    if not props["DisksProbed"]:
        raise ClientError(ERROR_PREFIX + "Busy", "anklumed has not finished looking at "
                          "the disks yet; try again in a moment")


def candidates_table(props: dict[str, Any]) -> Table:
    table = Table(title="Disks")
    for column in ("disk", "size", "model", "bus", "holds now", "usable"):
        table.add_column(column)
    for disk in candidates(props):
        table.add_row(disk.device, human_size(disk.size), disk.model or "?", disk.bus or "?",
                      "; ".join(disk.contents) or "empty",
                      f"[red]no: {disk.refused}[/red]" if disk.refused else "[green]yes[/green]")
    return table


async def cmd_data_status(c: Client, a: argparse.Namespace, out: Console) -> int:
    props = await probed_props(c)
    if a.json:
        print(json.dumps(props, indent=2, sort_keys=True))
        return 0
    out.print(f"Data disk: {data_words(props)}")
    for what, where in sorted(props["Mounts"].items()):
        out.print(f"  {what} mounted at {where}")
    if props["Message"]:
        out.print(f"  [red]{props['Message']}[/red]")
    out.print(candidates_table(props))
    if not props["DisksProbed"]:
        out.print("  (anklumed has not finished looking at the disks yet)")
    return 0


SECRET_FILE_MAX = 4096  # a passphrase, or a key file's few hundred bytes


def read_secret_file(path: str) -> bytes:
    """A passphrase from a file (a pipe too: ``<(pass show x)``), read with a bound."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(SECRET_FILE_MAX + 1)
        else:
            with Path(path).open("rb") as f:
                data = f.read(SECRET_FILE_MAX + 1)
    except FileNotFoundError:
        raise ClientError(ERROR_PREFIX + "NotFound", f"no passphrase file at {path}: "
                          "check the path") from None
    except OSError as e:
        raise ClientError(ERROR_PREFIX + "InvalidArgument", f"the passphrase file {path} "
                          f"cannot be read ({e.strerror}): give a readable file") from None
    if len(data) > SECRET_FILE_MAX:
        raise ClientError(ERROR_PREFIX + "InvalidArgument", f"the passphrase file {path} "
                          f"is larger than {SECRET_FILE_MAX} bytes: is it the right file?")
    return data[:-1] if data.endswith(b"\n") else data


def ask_new_passphrase(out: Console) -> bytes:
    while True:
        first = getpass.getpass("New passphrase for the data disk: ")
        if len(first) < WEAK_BELOW:
            out.print(f"[yellow]Warning: under {WEAK_BELOW} characters, this passphrase "
                      "can be guessed by someone who steals the disk.[/yellow]")
        if getpass.getpass("The same passphrase again: ") == first and first:
            return first.encode()
        out.print("[red]The two passphrases differ (or are empty); again.[/red]")


def filesystem(props: dict[str, Any], asked: str | None) -> str:
    """The filesystem to make: ``asked`` (--fs, the credential) if this system
    can make it, else the first it can. Said before anything is asked or
    erased: anklumed would refuse it only after the passphrase was typed."""
    offered = [str(name) for name in props["Filesystems"]]
    if not offered:
        require_probed(props)
        raise ClientError(ERROR_PREFIX + "NotFound", "this system can make neither ZFS nor "
                          "BTRFS: no data disk can be set up here")
    if asked is None:
        return offered[0]
    if asked not in offered:
        why = ("its kernel module is not loaded (under Secure Boot the kernel refuses an "
               "unsigned one), or it is not installed") if asked == "zfs" else "not installed"
        raise ClientError(ERROR_PREFIX + "NotFound", f"this system cannot make {asked}: {why}. "
                          f"Choose {' or '.join(offered)}; nothing was erased")
    return asked


def pick_disk(props: dict[str, Any], out: Console) -> str:
    out.print(candidates_table(props))
    usable = [disk.device for disk in candidates(props) if disk.usable]
    if not usable:
        require_probed(props)
        raise ClientError(ERROR_PREFIX + "NotFound", "no disk can hold the data "
                          "(plug one in; the table says why each disk is refused)")
    return Prompt.ask("Disk to erase and use for the data", choices=usable, console=out)


async def setup_props(c: Client, asked: str | None) -> tuple[Properties, str]:
    """The DataDisk's properties once probed, and the filesystem to make. One
    asked for and not offered is looked for again first: a module loaded
    since anklumed last looked (`modprobe zfs` by hand) is offered then."""
    props = await probed_props(c)
    if asked is not None and asked not in props["Filesystems"] and props["DisksProbed"]:
        await DataDisk(c).refresh()
        props = await data_props(c)
    return props, filesystem(props, asked)


async def cmd_data_setup(c: Client, a: argparse.Namespace, out: Console) -> int:
    props, a.fs = await setup_props(c, a.fs)
    disk = a.disk or pick_disk(props, out)
    if not a.yes:
        out.print(f"[bold red]Everything on {disk} will be erased.[/bold red]")
        if Prompt.ask(f"Type {disk} to confirm", console=out) != disk:
            out.print("Not confirmed; nothing was changed.")
            return 1
    secret = b""
    if a.encryption == "luks2":
        secret = read_secret_file(a.passphrase_file) if a.passphrase_file \
            else ask_new_passphrase(out)
    elif not a.yes:
        out.print("[yellow]Without encryption, anyone who takes the disk reads your "
                  "data.[/yellow]")
    job = await DataDisk(c).setup(disk, a.pool_name, a.fs, a.encryption, secret)
    if a.no_wait:
        out.print(f"Setup started: {job.path}")
        return 0
    return await follow_job(c, job.path, out)


async def cmd_data_adopt(c: Client, a: argparse.Namespace, out: Console) -> int:
    """A data disk set up from another stick: open it and make it this stick's."""
    props = await probed_props(c)
    found = adoptable(props)
    if a.disk:
        found = [disk for disk in found if disk.device == a.disk]
    if not found:
        require_probed(props)
        raise ClientError(ERROR_PREFIX + "NotFound", "no data disk from another stick "
                          "was found (is it plugged in? does this stick have one already?)")
    device, pool = found[0].device, found[0].pool
    out.print(f"Found the data disk of pool [bold]{pool}[/bold] on {device}, set up from "
              "another stick. It is opened as it is: nothing is erased.")
    if not a.yes and Prompt.ask("Use it as this stick's data disk?", choices=["yes", "no"],
                                console=out) != "yes":
        return 1
    secret = read_secret_file(a.passphrase_file) if a.passphrase_file \
        else getpass.getpass(f"Passphrase of the data disk ({pool}): ").encode()
    job = await DataDisk(c).adopt(device, secret)
    return await follow_job(c, job.path, out)


def credential(name: str) -> Path | None:
    """A systemd credential of this unit (ImportCredential=), if it was given."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    path = Path(directory) / name if directory else None
    return path if path is not None and path.exists() else None


def unattended(a: argparse.Namespace) -> bool:
    """First boot without a person (automated installs, the image tests): the
    credentials name the disk to erase and give its passphrase; both are needed,
    and a disk named on the command line wins. A third may name the filesystem."""
    disk, secret = credential(DISK_CREDENTIAL), credential(CREDENTIAL)
    if a.disk or disk is None or secret is None:
        return False
    a.fs = credential_filesystem() or a.fs
    a.disk = disk.read_text().strip()
    a.passphrase_file, a.encryption, a.yes = str(secret), "luks2", True
    return True


def credential_filesystem() -> str | None:
    """The filesystem the credential anklume-data-fs names, if it was given.
    A wrong name stops the first boot before any disk is erased."""
    path = credential(FS_CREDENTIAL)
    if path is None:
        return None
    name = path.read_text().strip()
    if name not in FILESYSTEMS:
        raise ClientError(ERROR_PREFIX + "InvalidArgument", f"the credential {FS_CREDENTIAL} "
                          f"says {name[:40]!r}: give one of {', '.join(FILESYSTEMS)}")
    return name


def boot_secrets() -> list[bytes]:
    """At boot: a systemd credential, else up to three answers of the agents."""
    secret = credential(CREDENTIAL)
    return [read_secret_file(str(secret))] if secret is not None else []


def ask_agent(pool: str) -> bytes | None:
    """The systemd password agent protocol: console and graphical agents answer."""
    proc = subprocess.run(
        ["systemd-ask-password", "--id=anklume-data", "--timeout=0",
         f"Passphrase for the anklume data disk ({pool}):"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout[:-1] if proc.stdout.endswith(b"\n") else proc.stdout


async def cmd_data_unlock(c: Client, a: argparse.Namespace, out: Console) -> int:
    props = await data_props(c)
    props.need("State", "Encryption", "Pool", purpose="data unlock")
    if props["State"] == "absent":
        out.print("No data disk is set up: nothing to unlock.")
        return 0
    if props["State"] == "mounted":
        out.print("The data disk is already mounted.")
        return 0
    if a.passphrase_file:
        secrets: list[bytes] | None = [read_secret_file(a.passphrase_file)]
    elif a.boot:
        secrets = boot_secrets() or None
    elif props["Encryption"] == "luks2" and sys.stdin.isatty():
        secrets = None
    else:
        secrets = [b""]  # no encryption, or pool.conf's KEY_FILE
    attempt = 0
    while True:
        attempt += 1
        if secrets is not None:
            secret = secrets.pop(0)
        elif a.boot:
            secret = ask_agent(props["Pool"]) or b""
        else:
            secret = getpass.getpass(f"Passphrase for the data disk ({props['Pool']}): ").encode()
        job = await DataDisk(c).unlock(secret)
        try:
            return await follow_job(c, job.path, out)
        except ClientError as e:
            again = secrets is None or bool(secrets)
            if e.name != ERROR_PREFIX + "IncorrectPassphrase" or not again \
                    or attempt >= ASK_ATTEMPTS:
                raise
            out.print(f"[red]{e.message}[/red]")


async def cmd_data_lock(c: Client, a: argparse.Namespace, out: Console) -> int:
    job = await DataDisk(c).lock(a.stop_incus)
    return await follow_job(c, job.path, out)


async def cmd_first_boot(c: Client, a: argparse.Namespace, out: Console) -> int:
    props = await probed_props(c)
    props.need("State", purpose="first-boot")
    if props["State"] != "absent":
        out.print(f"The data disk is already set up (pool {props['Pool']}).")
        return 0
    if adoptable(props):
        other = adoptable(props)[0]
        out.print(f"A data disk set up from another stick is plugged in ({other.device}, pool "
                  f"{other.pool}): keep it with `anklumectl data adopt`, or erase another disk.")
    if unattended(a):
        _, a.fs = await setup_props(c, a.fs)
        out.print(f"First boot: erasing {a.disk} for the data disk ({a.fs}), as the "
                  f"system credentials {DISK_CREDENTIAL} and {CREDENTIAL} ask.")
        return await cmd_data_setup(c, a, out)
    if not a.disk and not sys.stdin.isatty():
        out.print("No data disk is set up; run anklumectl first-boot in a terminal.")
        return 0
    out.print("[bold]First boot:[/bold] choose the disk that will hold your data. "
              "It will be erased and encrypted.")
    return await cmd_data_setup(c, a, out)


def current_secret(a: argparse.Namespace, pool: str) -> bytes:
    if a.passphrase_file:
        return read_secret_file(a.passphrase_file)
    return getpass.getpass(f"Current passphrase of the data disk ({pool}): ").encode()


async def cmd_data_passphrase(c: Client, a: argparse.Namespace, out: Console) -> int:
    props = await data_props(c)
    current = current_secret(a, props["Pool"])
    new = read_secret_file(a.new_passphrase_file) if a.new_passphrase_file \
        else ask_new_passphrase(out)
    await DataDisk(c).change_passphrase(current, new)
    out.print("The passphrase is changed (a recovery key, if any, still works).")
    return 0


async def cmd_data_recovery_key(c: Client, a: argparse.Namespace, out: Console) -> int:
    props = await data_props(c)
    current = current_secret(a, props["Pool"])
    key = await DataDisk(c).add_recovery_key(current)
    out.print("Recovery key (it opens the data disk like the passphrase; it is shown "
              "this once and kept nowhere -- write it down, keep it away from the laptop):")
    print(key.decode())
    return 0


async def cmd_data_needs_setup(c: Client, a: argparse.Namespace, out: Console) -> int:
    """Exit 0 while no data disk is set up (the first-boot unit's ExecCondition)."""
    props = await data_props(c)
    props.need("State", purpose="data needs-setup")
    return 0 if props["State"] == "absent" else 1


def add_setup_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--disk", help="the disk to erase (/dev/sdX or a /dev/disk/by-id name)")
    parser.add_argument("--pool-name", default="anklume", help="default: anklume")
    parser.add_argument("--fs", choices=FILESYSTEMS,
                        help="default: the first this system can make (zfs where it works)")
    parser.add_argument("--encryption", choices=("luks2", "none"), default="luks2")
    parser.add_argument("--passphrase-file", metavar="FILE", help="- reads standard input")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--no-wait", action="store_true", help="start it and return")


def add_commands(sub: Any, add: Any) -> None:
    data = sub.add_parser("data", help="the encrypted data disk")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    def add_data(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = data_sub.add_parser(name, help=help)
        sp.set_defaults(func=fn)
        return sp

    add_data("status", cmd_data_status, "the data disk and the disks that could be it") \
        .add_argument("--json", action="store_true")
    add_setup_flags(add_data("setup", cmd_data_setup, "erase a disk and make it the data disk"))
    sp = add_data("unlock", cmd_data_unlock, "open and mount the data disk")
    sp.add_argument("--passphrase-file", metavar="FILE", help="- reads standard input")
    sp.add_argument("--boot", action="store_true",
                    help="at boot: a systemd credential, else the password agents")
    sp = add_data("passphrase", cmd_data_passphrase, "change the data disk's passphrase")
    sp.add_argument("--passphrase-file", metavar="FILE", help="the current one (- for stdin)")
    sp.add_argument("--new-passphrase-file", metavar="FILE", help="the new one")
    add_data("recovery-key", cmd_data_recovery_key,
             "add a recovery key (a second way to open the disk)").add_argument(
        "--passphrase-file", metavar="FILE", help="the current passphrase (- for stdin)")
    add_data("needs-setup", cmd_data_needs_setup,
             "exit 0 if no data disk is set up yet (for the first-boot unit)")
    sp = add_data("adopt", cmd_data_adopt, "keep a data disk set up from another stick")
    sp.add_argument("--disk", help="which one, when several are found")
    sp.add_argument("--passphrase-file", metavar="FILE", help="- reads standard input")
    sp.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_data("lock", cmd_data_lock, "unmount and close the data disk").add_argument(
        "--stop-incus", action="store_true", help="stop Incus first")
    add_setup_flags(add("first-boot", cmd_first_boot,
                        "set up the data disk if none is (interactive without flags)"))
