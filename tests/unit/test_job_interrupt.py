"""Ctrl-C while anklumectl follows a job: ask to cancel an update only."""

from __future__ import annotations

import pytest

from anklumectl.jobs import on_interrupt

JOB = "/org/anklume/Live1/job/7"


def test_an_update_is_asked_about() -> None:
    assert on_interrupt("update", JOB) is None


@pytest.mark.parametrize("kind", ["data-setup", "data-unlock", "data-adopt", "data-lock"])
def test_a_data_job_goes_on_and_the_user_is_told_how_to_cancel_it(kind: str) -> None:
    note = on_interrupt(kind, JOB)
    assert note is not None
    assert f"the {kind} job goes on" in note
    assert "anklumectl wait 7" in note and "anklumectl cancel 7" in note
