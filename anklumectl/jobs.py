"""Following a job of anklumed: progress bar, Ctrl-C offers to cancel."""

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


JOB_IFACE = "org.anklume.Live1.Job"


async def job_props(c: Client, path: str) -> dict[str, Any]:
    (props,) = await c.call(path, "org.freedesktop.DBus.Properties", "GetAll", "s",
                            [JOB_IFACE])
    result: dict[str, Any] = props
    return result


async def follow_job(c: Client, path: str, out: Console) -> int:
    """Show a job's progress until it ends; Ctrl-C offers to cancel it."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
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
                if Confirm.ask("Cancel the update?", console=out, default=False):
                    await c.call(path, JOB_IFACE, "Cancel", mutating=True)
                bar.start()
    if props["State"] == "succeeded":
        out.print(props["Result"])
        return 0
    raise ClientError(ERROR_PREFIX + (props["ErrorName"] or "Failed"), props["Message"])
