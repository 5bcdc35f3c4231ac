"""Long operations as jobs: progress, cancel, a kept result (DESIGN.md §5).

A job's work runs in worker threads; it reports through ``progress()`` and
polls ``check_cancelled()`` at points where stopping leaves nothing half done.
Once a job enters a phase that must finish (activation), ``commit()`` makes
cancel a no-op. Listeners hear of changes on the event loop, at most a few
times a second, so a fast write does not flood the bus.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from anklumed import events
from anklumed.errors import AnklumeError, Busy, Cancelled, ErrorCode, Failed

log = logging.getLogger(__name__)
NOTIFY_INTERVAL = 0.25


class JobState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    """The long operations anklumed runs (a Job's Kind)."""

    UPDATE = "update"
    DATA_SETUP = "data-setup"
    DATA_UNLOCK = "data-unlock"
    DATA_ADOPT = "data-adopt"
    DATA_LOCK = "data-lock"


class JobPhase(StrEnum):
    """Where a job is (a Job's Phase): every phase any job reports."""

    STARTING = "starting"
    CHECKING = "checking"
    WRITING = "writing"
    SYNCING = "syncing"
    VERIFYING = "verifying"
    KERNEL = "kernel"  # an update: the slot's UKI to the ESP, before activation
    ACTIVATING = "activating"
    FORMATTING = "formatting"
    OPENING = "opening"
    CREATING = "creating"
    INCUS = "incus"
    SAVING = "saving"
    UNLOCKING = "unlocking"
    RESUMING = "resuming"
    MOUNTING = "mounting"
    STOPPING_INCUS = "stopping incus"
    UNMOUNTING = "unmounting"
    CLOSING = "closing"


class Job:
    def __init__(self, number: int, kind: str,
                 loop: asyncio.AbstractEventLoop, on_change: Callable[[Job], None]) -> None:
        self.number = number
        self.kind = kind
        self.state = JobState.RUNNING
        self.phase = JobPhase.STARTING
        self.done = 0
        self.total = 0
        self.result = ""
        self.error_name = ""
        self.error_code = ""  # an ErrorCode once the job failed or was cancelled
        self.message = ""
        self.started = time.monotonic()
        self._phase_started = self.started
        self._phase_done0 = 0
        self._cancel = threading.Event()
        self._committed = False
        self._loop = loop
        self._on_change = on_change
        self._last_notify = 0.0
        self._lock = threading.Lock()

    # ---- reported by the work (any thread) ----
    def progress(self, phase: str, done: int = 0, total: int = 0) -> None:
        """``phase`` is a JobPhase; a name that is none raises ValueError here,
        in the work, not later where the job is published."""
        named = JobPhase(phase)
        with self._lock:
            new_phase = named is not self.phase
            if new_phase:
                self._phase_started, self._phase_done0 = time.monotonic(), done
            self.phase, self.done, self.total = named, done, total
        now = time.monotonic()
        if new_phase or now - self._last_notify >= NOTIFY_INTERVAL or done == total:
            self._last_notify = now
            self._loop.call_soon_threadsafe(self._on_change, self)

    def check_cancelled(self) -> None:
        if self._cancel.is_set() and not self._committed:
            raise Cancelled(f"{self.kind} cancelled during {self.phase}")

    def pause(self, seconds: float) -> None:
        """Wait (between retries), waking at once when the job is cancelled."""
        self._cancel.wait(seconds)
        self.check_cancelled()

    def commit(self) -> None:
        """From here on the job finishes: cancel is refused (see ``cancellable``)."""
        with self._lock:  # a Cancel either lands before this or is refused
            self.check_cancelled()
            self._committed = True
        self._loop.call_soon_threadsafe(self._on_change, self)

    # ---- read by the service ----
    @property
    def cancellable(self) -> bool:
        return self.state is JobState.RUNNING and not self._committed

    @property
    def rate(self) -> int:
        """Bytes per second in the current phase."""
        elapsed = time.monotonic() - self._phase_started
        return int((self.done - self._phase_done0) / elapsed) if elapsed > 0.2 else 0

    @property
    def eta(self) -> int:
        """Seconds left in the current phase, -1 when unknown."""
        rate = self.rate
        if not rate or not self.total or self.state is not JobState.RUNNING:
            return -1
        return int((self.total - self.done) / rate)

    def cancel(self) -> bool:
        with self._lock:
            if not self.cancellable:
                return False
            self._cancel.set()
            return True


JobWork = Callable[[Job], Awaitable[str]]


class JobManager:
    """Starts jobs, one at a time per group, and keeps the last one of each kind."""

    def __init__(self, on_change: Callable[[Job], None],
                 on_finished: Callable[[Job], None]) -> None:
        self._numbers = itertools.count(1)
        self._on_change = on_change
        self._on_finished = on_finished
        self.running: dict[str, Job] = {}      # by group
        self.last: dict[JobKind, Job] = {}     # by kind, finished or not
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, kind: JobKind, group: str, work: JobWork) -> Job:
        if group in self.running:
            other = self.running[group]
            raise Busy(f"a {other.kind} is already running (job {other.number}); "
                       "wait for it or cancel it")
        job = Job(next(self._numbers), kind, asyncio.get_running_loop(), self._on_change)
        self.running[group] = job
        self.last[kind] = job
        task = asyncio.create_task(self._run(job, group, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job, group: str, work: JobWork) -> None:
        try:
            job.result = await work(job)
            job.state = JobState.SUCCEEDED
        except Cancelled as e:
            job.state, job.error_name, job.message = JobState.CANCELLED, "Cancelled", str(e)
            job.error_code = e.code
        except asyncio.CancelledError:  # stop(): the daemon ends; its last word is not "running"
            job.state, job.error_name = JobState.CANCELLED, "Cancelled"
            job.message, job.error_code = "anklumed stopped while it ran", ErrorCode.CANCELLED
            raise
        except AnklumeError as e:
            job.state, job.error_name, job.message = JobState.FAILED, e.dbus_suffix, str(e)
            job.error_code = e.code
        except Exception as e:
            log.exception("job %d (%s) failed unexpectedly", job.number, job.kind)
            job.state, job.error_name = JobState.FAILED, Failed.dbus_suffix
            job.error_code = ErrorCode.INTERNAL_ERROR
            job.message = f"internal error: {type(e).__name__}"
        finally:
            del self.running[group]
            log.info("job %d (%s) %s%s", job.number, job.kind, job.state.value,
                     f": {job.message}" if job.message else "")
            events.job_finished(job.kind, job.state.value, job.error_name, job.message)
            self._on_change(job)
            self._on_finished(job)

    async def stop(self) -> None:
        for job in self.running.values():
            job.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
