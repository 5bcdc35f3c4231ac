"""anklumed.command.run: never on the event loop's thread."""

import asyncio

import pytest

from anklumed.command import CommandError, OnEventLoop, run


async def test_run_refuses_the_event_loop_thread() -> None:
    with pytest.raises(OnEventLoop, match="true would block the event loop"):
        run(["true"])


async def test_run_works_in_a_worker_thread() -> None:
    proc = await asyncio.to_thread(run, ["echo", "from a worker"])
    assert proc.stdout == b"from a worker\n"
    with pytest.raises(CommandError, match="false exited with status 1"):
        await asyncio.to_thread(run, ["false"])


def test_run_works_without_a_loop() -> None:
    assert run(["printf", "plain"]).stdout == b"plain"
