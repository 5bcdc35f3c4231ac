"""BootDeadline: the seconds a boot has left, and how anklumectl shows them."""

from __future__ import annotations

import pytest

from anklumectl.render import deadline_words
from anklumed.core.system import seconds_left


@pytest.mark.parametrize(("deadline", "now", "left"), [
    (None, 100.0, 0), (700.0, 100.0, 600), (700.0, 699.2, 1), (700.0, 700.0, 1),
    (700.0, 750.0, 1), (100.5, 100.0, 1), (1000.0, 0.5, 1000),
])
def test_seconds_left(deadline: float | None, now: float, left: int) -> None:
    # A pending deadline never reads 0: 0 is "no deadline pending".
    assert seconds_left(deadline, now) == left


@pytest.mark.parametrize(("seconds", "words"), [(45, "45 s"), (600, "10 min 0 s"),
                                                 (61, "1 min 1 s")])
def test_deadline_words(seconds: int, words: str) -> None:
    assert deadline_words(seconds) == words
