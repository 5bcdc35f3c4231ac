"""The test tools' loop devices when two tests run at once (pytest -n 2): a
loop device's name, once freed, is the next test's (devtools/stickimg.py)."""

from __future__ import annotations

from pathlib import Path

from devtools import stickimg
from devtools.slowness import scaled


def test_a_stick_detached_twice_leaves_the_disk_that_took_its_name(tmp_path: Path) -> None:
    """A test pulls its stick, and its teardown detaches it again: by then
    another test's disk may have that loop name, and must stay attached."""
    stickimg.write_gpt(tmp_path / "stick.img", slot_mib=1, persist_mib=1)
    (tmp_path / "theirs.img").write_bytes(bytes(1 << 20))
    stick = stickimg.attach(tmp_path / "stick.img")
    with stickimg.loop_names_held():  # the other disk takes the stick's name
        stick.detach()
        assert stickimg.attach_as(stick.loop, tmp_path / "theirs.img", scaled(5))
    try:
        stick.detach()  # the teardown's
        assert stickimg.backing_file(stick.loop) == tmp_path / "theirs.img"
    finally:
        stickimg.detach_if_holding(stick.loop, tmp_path / "theirs.img")
    assert stickimg.backing_file(stick.loop) is None
