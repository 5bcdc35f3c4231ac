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


def test_a_failed_mount_says_why_not_where_to_look() -> None:
    """util-linux ends every failed mount with a pointer to dmesg: the reason
    is the line above it (CI once got only the pointer)."""
    stderr = ("mount: /run/anklume/persist: can't read superblock on /dev/sda4.\n"
              "       dmesg(1) may have more information after failed mount system call.\n")
    error = CommandError(["mount", "/dev/sda4", "/run/anklume/persist"], 32, stderr)
    assert str(error) == ("mount exited with status 32: "
                          "mount: /run/anklume/persist: can't read superblock on /dev/sda4.")
