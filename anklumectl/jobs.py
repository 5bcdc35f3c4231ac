"""Following a job of anklumed: progress bar; Ctrl-C offers to cancel an update."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.prompt import Confirm

from anklumectl.client import Client, ClientError

ERROR_PREFIX = "org.anklume.Live1.Error."
INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C


JOB_IFACE = "org.anklume.Live1.Job"


async def job_props(c: Client, path: str) -> dict[str, Any]:
    (props,) = await c.call(path, "org.freedesktop.DBus.Properties", "GetAll", "s",
                            [JOB_IFACE])
    result: dict[str, Any] = props
    return result


def on_interrupt(kind: str, path: str) -> str | None:
    """What Ctrl-C while following a job does: None to ask whether to cancel
    it (an update: minutes long, and cancelling it is safe until activation),
    otherwise the sentence to print before leaving the job to go on (a data
    job: a stray "cancel?" must not leave a disk half set up or unlocked)."""
    if kind == "update":
        return None
    number = path.rsplit("/", 1)[-1]
    return (f"Stopped following; the {kind} job goes on in anklumed. "
            f"Follow it again with: anklumectl wait {number}; "
            f"stop it with: anklumectl cancel {number}")


async def follow_job(c: Client, path: str, out: Console) -> int:
    """Show a job's progress until it ends; Ctrl-C offers to cancel an update,
    and leaves any other job running (see ``on_interrupt``)."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    props: dict[str, Any] = {}
    with Progress(*columns, console=out, transient=True) as bar:
        task = bar.add_task("starting", total=None)
        while True:
            try:
                props = await job_props(c, path)
                if props["State"] != "running":
                    break
                bar.update(task, description=props["Phase"],
                           completed=props["BytesDone"], total=props["BytesTotal"] or None)
                await asyncio.sleep(0.25)
            except (KeyboardInterrupt, asyncio.CancelledError):
                # Ctrl-C cancels our task; take it back and ask what was meant.
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                bar.stop()
                kind = props.get("Kind") or (await job_props(c, path))["Kind"]
                note = on_interrupt(kind, path)
                if note is not None:
                    out.print(note)
                    return INTERRUPTED
                if Confirm.ask("Cancel the update?", console=out, default=False):
                    await c.call(path, JOB_IFACE, "Cancel", mutating=True)
                bar.start()
    if props["State"] == "succeeded":
        out.print(props["Result"])
        return 0
    raise ClientError(ERROR_PREFIX + (props["ErrorName"] or "Failed"), props["Message"])
