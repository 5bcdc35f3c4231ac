"""A job's ErrorCode: the error's own code, a finer one from the raise site,
internal-error for a surprise, and nothing on success."""

from __future__ import annotations

import asyncio

import pytest

from anklumed.errors import Cancelled, ErrorCode, RefusedBootDevice
from anklumed.jobs import Job, JobKind, JobManager, JobState
from anklumed.persist import PersistFull


async def finished_job(error: BaseException | None) -> Job:
    done: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
    jobs = JobManager(lambda job: None, done.set_result)

    async def work(job: Job) -> str:
        if error is not None:
            raise error
        return "done"

    jobs.start(JobKind.DATA_SETUP, "data", work)
    return await asyncio.wait_for(done, 5)


@pytest.mark.parametrize(("error", "state", "code"), [
    (None, JobState.SUCCEEDED, ""),
    (Cancelled("stop"), JobState.CANCELLED, ErrorCode.CANCELLED),
    (RefusedBootDevice("no"), JobState.FAILED, ErrorCode.REFUSED_BOOT_DEVICE),
    (RefusedBootDevice("sdb1 is mounted", code=ErrorCode.DISK_MOUNTED), JobState.FAILED,
     ErrorCode.DISK_MOUNTED),
    (PersistFull("full"), JobState.FAILED, ErrorCode.PERSIST_FULL),
    (ValueError("bug"), JobState.FAILED, ErrorCode.INTERNAL_ERROR),
])
def test_a_job_reports_its_error_code(error: BaseException | None, state: JobState,
                                      code: str) -> None:
    job = asyncio.run(finished_job(error))
    assert (job.state, job.error_code) == (state, code)


def test_a_job_ended_by_the_daemons_stop_says_cancelled_not_running() -> None:
    # A data job whose work does not watch job.cancel (a thread that will not
    # be interrupted): the daemon's stop cancels its task. Its last word, in
    # the log and the journal, must not be "running".
    async def scenario() -> Job:
        finished: list[Job] = []
        jobs = JobManager(lambda job: None, finished.append)
        started = asyncio.Event()

        async def work(job: Job) -> str:
            started.set()
            await asyncio.sleep(3600)
            return "done"

        jobs.start(JobKind.DATA_SETUP, "data", work)
        await started.wait()
        await jobs.stop()
        return finished[0]

    job = asyncio.run(scenario())
    assert (job.state, job.error_code) == (JobState.CANCELLED, ErrorCode.CANCELLED)
    assert "anklumed stopped" in job.message
