"""Boot state derivation from PERSIST and the hand-off."""

from datetime import UTC, datetime

from anklumed.handoff import parse_handoff
from anklumed.slots.assessment import BootState, ReasonCode, assess
from anklumed.slots.model import Rollback, SlotMeta, SlotsState, SlotStatus
from anklumed.stick import SlotName

A, B = SlotName.A, SlotName.B
BOOT = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def state(primary: SlotName = A, count: int = 1, b_status: SlotStatus = SlotStatus.OK,
          a_good: datetime | None = None) -> SlotsState:
    return SlotsState(
        primary=primary, boot_count=count, boot_attempts=3,
        meta={A: SlotMeta(status=SlotStatus.OK, last_good_at=a_good),
              B: SlotMeta(status=b_status)},
        last_rollback=Rollback(from_slot=B, to_slot=A, reason="boot-count"),
    )



def test_pending_then_good() -> None:
    h = parse_handoff("SLOT=A\n", "")
    assert assess(state(count=1), h, BOOT).state is BootState.PENDING
    good = assess(state(count=0), h, BOOT)
    assert good.state is BootState.GOOD and good.marked_good and good.fallback is B


def test_booted_other_than_primary_is_good_only_once_stamped() -> None:
    h = parse_handoff("SLOT=A\n", "")
    # An update made B primary; A still runs. A's old stamp does not count.
    old = assess(state(primary=B, count=0, a_good=datetime(2026, 1, 1, tzinfo=UTC)), h, BOOT)
    assert old.state is BootState.PENDING and old.primary is B
    fresh = assess(state(primary=B, count=0, a_good=BOOT), h, BOOT)
    assert fresh.state is BootState.GOOD


def test_rolled_back_names_the_source() -> None:
    h = parse_handoff("SLOT=A\nROLLBACK=1\nROLLBACK_FROM=B\n", "")
    a = assess(state(b_status=SlotStatus.FAILED), h, BOOT)
    assert a.state is BootState.ROLLED_BACK and "from slot B" in a.reasons[0]
    assert a.fallback is None


def test_exhausted_without_fallback_is_degraded() -> None:
    h = parse_handoff("SLOT=A\n", "")
    a = assess(state(count=4, b_status=SlotStatus.EMPTY), h, BOOT)
    assert a.state is BootState.DEGRADED


def test_unknown_booted_slot_and_missing_persist_are_degraded() -> None:
    assert assess(state(), parse_handoff(None, "quiet"), BOOT).state is BootState.DEGRADED
    a = assess(None, parse_handoff("SLOT=A\n", ""), BOOT, "stick pulled")
    assert a.state is BootState.DEGRADED and a.reasons == ("stick pulled",)


def test_handoff_fallback_to_cmdline() -> None:
    h = parse_handoff(None, "root=/dev/x anklume.slot=b anklume.toram anklume.ram_crypt=1")
    assert h.source == "cmdline" and h.slot is B and h.toram is True
    assert h.ram_crypt_requested is True and h.rollback is None and h.boot_disk is None


def test_handoff_garbage() -> None:
    h = parse_handoff("SLOT=Q\nBOOT_COUNT=x\nTORAM=maybe\nBOOT_DISK=../etc\n\x00\x01", "")
    assert h.slot is None and h.boot_count is None and h.toram is None and h.boot_disk is None
    assert h.problems


def test_a_degraded_boot_of_the_last_good_slot_is_degraded() -> None:
    # Both slots exhausted: the initramfs booted B (last good) while A is primary.
    h = parse_handoff("SLOT=B\nDEGRADED=1\n", "")
    a = assess(state(primary=A, count=4), h, BOOT)
    assert a.state is BootState.DEGRADED and "last good" in a.reasons[0]
    assert assess(state(primary=A, count=4), parse_handoff("SLOT=B\n", ""), BOOT).state \
        is BootState.PENDING


def test_every_reason_has_its_code_in_the_same_order() -> None:
    cases = {
        "persist": assess(None, parse_handoff("SLOT=A\n", ""), BOOT, "stick pulled"),
        "unknown": assess(state(), parse_handoff(None, "quiet"), BOOT),
        "exhausted": assess(state(count=4, b_status=SlotStatus.EMPTY),
                            parse_handoff("SLOT=A\n", ""), BOOT),
        "last good": assess(state(primary=A, count=4),
                            parse_handoff("SLOT=B\nDEGRADED=1\n", ""), BOOT),
        "rolled back": assess(state(primary=A, count=4, b_status=SlotStatus.FAILED),
                              parse_handoff("SLOT=A\nROLLBACK=1\nROLLBACK_FROM=B\n", ""), BOOT),
        "good": assess(state(count=0), parse_handoff("SLOT=A\n", ""), BOOT),
    }
    assert {name: a.reason_codes for name, a in cases.items()} == {
        "persist": (ReasonCode.PERSIST_UNREADABLE,),
        "unknown": (ReasonCode.BOOTED_SLOT_UNKNOWN,),
        "exhausted": (ReasonCode.ATTEMPTS_EXHAUSTED,),
        "last good": (ReasonCode.ALL_SLOTS_EXHAUSTED,),
        "rolled back": (ReasonCode.ROLLED_BACK, ReasonCode.ATTEMPTS_EXHAUSTED),
        "good": (),
    }
    assert all(len(a.reasons) == len(a.reason_codes) for a in cases.values())
