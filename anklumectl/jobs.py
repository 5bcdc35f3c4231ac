"""Following a job of anklumed: progress bar; Ctrl-C offers to cancel an update.

The job is followed by its signals (anklume_client's ``Job.follow``), not by
polling: the bar moves when the daemon reports progress.
"""

from __future__ import annotations

import asyncio

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

from anklume_client.errors import ExitCode, daemon_error
from anklume_client.interface import JOB
from anklume_client.models import JobState, JobStatus
from anklume_client.properties import Properties
from anklume_client.proxies import Job
from anklumectl.client import Client

INTERRUPTED = ExitCode.INTERRUPTED
JOB_IFACE = JOB.name


async def job_props(c: Client, path: str) -> Properties:
    return await Job(c, path).properties()


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
    job = Job(c, path)
    with Progress(*columns, console=out, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        seen: list[JobStatus] = []  # the last one: its kind, without asking again

        def progress(status: JobStatus) -> None:
            # Each phase is drawn as it starts (signals can be quicker than
            # the bar's own refresh, and a short phase would never show).
            new_phase = not seen or seen[0].phase != status.phase
            seen[:] = [status]
            bar.update(task, description=status.phase, completed=status.bytes_done,
                       total=status.bytes_total or None, refresh=new_phase)

        while True:
            try:
                end = await job.follow(progress)
                break
            except (KeyboardInterrupt, asyncio.CancelledError):
                # Ctrl-C cancels our task; take it back and ask what was meant.
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                bar.stop()
                # A daemon that hangs must not hang Ctrl-C: the kind already read.
                kind = seen[0].kind if seen else (await job.status()).kind
                note = on_interrupt(kind, path)
                if note is not None:
                    out.print(note)
                    return INTERRUPTED
                if Confirm.ask("Cancel the update?", console=out, default=False):
                    await job.cancel()
                bar.start()
    if end.state == JobState.SUCCEEDED:
        out.print(end.result or (await job.status()).result)
        return 0
    raise daemon_error(end.error_name or "Failed", end.message)
