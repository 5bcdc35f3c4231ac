"""What the tray shows and announces, from the state (anklume_desktop.tray)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from anklume_desktop.daemon import (
    BootState,
    DataState,
    JobState,
    Progress,
    parse_data_disk,
    parse_status,
)
from anklume_desktop.tray import applet, pixmap
from anklume_desktop.tray.notices import Memory, notices
from anklume_desktop.tray.view import COLOURS, Action, Look, view

STATUS = parse_status({"BootState": "good", "BootedSlot": "A", "FallbackSlot": "B"})
DATA = parse_data_disk({"State": "mounted", "Pool": "vault", "Encryption": "luks2"})


@pytest.mark.parametrize(("boot", "data", "look"), [
    (BootState.GOOD, DATA, Look.GOOD),
    (BootState.PENDING, DATA, Look.PENDING),
    (BootState.ROLLED_BACK, DATA, Look.ROLLED_BACK),
    (BootState.DEGRADED, DATA, Look.DEGRADED),
    (BootState.GOOD, dataclasses.replace(DATA, state=DataState.LOCKED), Look.LOCKED),
    (BootState.GOOD, dataclasses.replace(DATA, pulled=True), Look.PULLED),
])
def test_the_look_follows_the_state(boot: BootState, data: object, look: Look) -> None:
    shown = view(dataclasses.replace(STATUS, boot_state=boot), data)  # type: ignore[arg-type]
    assert shown.look == look
    assert shown.icon_name == f"anklume-live-{look}"


def test_nothing_the_person_must_see_is_passive() -> None:
    looks = {view(None, None).look: view(None, None).status}
    for boot in BootState:
        shown = view(dataclasses.replace(STATUS, boot_state=boot),
                     dataclasses.replace(DATA, pulled=True))
        looks[shown.look] = shown.status
    assert looks[Look.UNREACHABLE] == looks[Look.DEGRADED] == "NeedsAttention"
    assert looks[Look.ROLLED_BACK] == looks[Look.PULLED] == "NeedsAttention"
    assert "Passive" not in looks.values()


def test_an_update_shows_its_progress_and_disables_update_now() -> None:
    shown = view(dataclasses.replace(STATUS, update_running=True), DATA,
                 Progress("writing", 40, 100))
    assert shown.look == Look.UPDATING
    assert "Update running: writing 40%" in shown.tooltip
    assert shown.done == 0.4
    assert {e.action: e.enabled for e in shown.menu}[Action.UPDATE] is False
    unknown = view(dataclasses.replace(STATUS, update_running=True), DATA,
                   Progress("checking", 0, 0))
    assert "Update running: checking" in unknown.tooltip and unknown.done == 1.0


def test_an_updates_icon_is_a_pie_of_its_progress() -> None:
    rest = (255, 1, 2, 3)
    size = pixmap.SIZES[-1]
    pixels = pixmap.icon(COLOURS[Look.UPDATING], 0.25, rest)[-1][2]
    assert isinstance(pixels, bytes)
    cells = [pixels[i:i + 4] for i in range(0, len(pixels), 4)]
    done, left = cells.count(bytes(COLOURS[Look.UPDATING])), cells.count(bytes(rest))
    assert abs(done / (done + left) - 0.25) < 0.03
    top_right = cells[size // 4 * size + size * 3 // 4]  # clockwise from twelve: done first
    assert top_right == bytes(COLOURS[Look.UPDATING])


def test_the_persons_update_source_comes_before_the_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc-update-source"
    monkeypatch.setattr(applet, "SYSTEM_UPDATE_SOURCE", system)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert applet.update_source() == ""
    system.write_text("https://example.org/channel/os.manifest\n")
    assert applet.update_source() == "https://example.org/channel/os.manifest"
    mine = tmp_path / "config" / "anklume" / "update-source"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"\xff\xfe")  # not text: skipped, not a traceback
    assert applet.update_source() == "https://example.org/channel/os.manifest"
    mine.write_text("  /media/stick/os.manifest  \nignored\n")
    assert applet.update_source() == "/media/stick/os.manifest"


def test_the_menu_offers_what_can_be_done() -> None:
    enabled = {e.action: e.enabled for e in view(STATUS, DATA).menu}
    assert enabled == {Action.UPDATE: True, Action.ROLLBACK: True, Action.LOCK: True,
                       Action.UNLOCK: False, Action.GUIDE: True}
    locked = dataclasses.replace(DATA, state=DataState.LOCKED)
    no_fallback = dataclasses.replace(STATUS, fallback_slot="")
    enabled = {e.action: e.enabled for e in view(no_fallback, locked).menu}
    assert enabled[Action.ROLLBACK] is False and enabled[Action.UNLOCK] is True


def test_the_pixmap_is_the_looks_colour_in_network_order() -> None:
    for look, argb in COLOURS.items():
        drawn = pixmap.icon(argb)
        assert [(w, h) for w, h, _ in drawn] == [(s, s) for s in pixmap.SIZES], look
        size = pixmap.SIZES[-1]
        pixels = drawn[-1][2]
        assert isinstance(pixels, bytes) and len(pixels) == size * size * 4
        middle = (size // 2 * size + size // 2) * 4
        assert pixels[middle:middle + 4] == bytes(argb)
        assert pixels[0:4] == bytes(4)  # the corner is transparent


def test_notices_are_made_once_per_boot(tmp_path: Path) -> None:
    rolled = dataclasses.replace(STATUS, boot_state=BootState.ROLLED_BACK,
                                 last_update_job="/org/anklume/Live1/job/3",
                                 last_update_state=JobState.SUCCEEDED)
    first = Memory(tmp_path, boot_id="boot-1")
    made = first.fresh(notices(rolled, DATA))
    assert sorted(n.key for n in made) == ["rolled-back", "update-/org/anklume/Live1/job/3"]
    assert [n.actions for n in made if n.key.startswith("update")] == [(("reboot",
                                                                          "Reboot now"),)]
    for notice in made:
        first.announced(notice)
    # Another login, same boot: nothing again. A new boot: again.
    assert Memory(tmp_path, boot_id="boot-1").fresh(notices(rolled, DATA)) == []
    second_boot = Memory(tmp_path, boot_id="boot-2")
    made = second_boot.fresh(notices(rolled, DATA))
    assert len(made) == 2
    second_boot.announced(made[0])
    assert [p.name for p in tmp_path.iterdir()] == ["announced-boot-2"]


def test_a_notice_no_daemon_took_is_still_to_announce(tmp_path: Path) -> None:
    # Under Plasma the tray's first notices come before its shell takes the
    # notifications' name: wanted then, not announced; the next try (a
    # daemon coming, the next login) must still offer them.
    rolled = dataclasses.replace(STATUS, boot_state=BootState.ROLLED_BACK)
    memory = Memory(tmp_path, boot_id="b")
    wanted = notices(rolled, DATA)
    assert memory.fresh(wanted) == wanted
    assert memory.fresh(wanted) == wanted
    assert Memory(tmp_path, boot_id="b").fresh(wanted) == wanted
    memory.announced(wanted[0])
    assert Memory(tmp_path, boot_id="b").fresh(wanted) == []


def test_a_pulled_disk_is_announced_again_when_pulled_again(tmp_path: Path) -> None:
    memory = Memory(tmp_path, boot_id="b")
    pulled = dataclasses.replace(DATA, pulled=True)
    made = memory.fresh(notices(STATUS, pulled))
    assert [n.key for n in made] == ["pulled"]
    memory.announced(made[0])
    assert memory.fresh(notices(STATUS, pulled)) == []
    assert memory.fresh(notices(STATUS, DATA)) == []  # back: forgotten
    assert [n.key for n in memory.fresh(notices(STATUS, pulled))] == ["pulled"]


@pytest.mark.parametrize(("status", "data", "key", "summary"), [
    (dataclasses.replace(STATUS, boot_state=BootState.DEGRADED, reasons=("PERSIST is full",)),
     DATA, "degraded", "The system is degraded"),
    (dataclasses.replace(STATUS, safe_to_remove=True, root_in_ram=True), DATA,
     "safe-to-remove", "The USB stick can be safely removed"),
    (STATUS, dataclasses.replace(DATA, state=DataState.LOCKED, attempts_left=0),
     "unlock-paused", "Unlocking is paused"),
    (dataclasses.replace(STATUS, last_update_job="/j/4", last_update_state=JobState.FAILED,
                         last_update_message="the signature is wrong"), DATA,
     "update-/j/4", "The update did not finish"),
])
def test_each_event_has_its_notice(status: object, data: object, key: str,
                                   summary: str) -> None:
    made = {n.key: n for n in notices(status, data)}  # type: ignore[arg-type]
    assert list(made) == [key]
    assert made[key].summary == summary


def test_the_tooltip_says_the_next_slot_and_a_removable_stick() -> None:
    shown = view(dataclasses.replace(STATUS, primary_slot="B", safe_to_remove=True), DATA)
    assert "Slot B boots next" in shown.tooltip
    assert "The USB stick can be safely removed" in shown.tooltip
    assert "boots next" not in view(dataclasses.replace(STATUS, primary_slot="A"), DATA).tooltip
