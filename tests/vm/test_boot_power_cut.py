"""Power cuts while the initramfs writes PERSIST: QEMU killed at seeded moments.

The boot prints "anklume: counting the attempt" just before
``anklume-state.sh record`` writes boot-count, ab-state and last-rollback;
the host kills QEMU a seeded time after that line (0 to 0.5 s, under TCG
the writes take about that). After each cut PERSIST is mounted here (the
journal replayed, as the next boot's mount does) and must hold valid files
(anklumed's reader reports no problem) in the state before the boot or in
the one the boot rule (anklumed.slots.selection) says the boot writes. A
last boot, uncut, must then decide by that rule from what the cuts left.

Two sticks are cut side by side, each by boots of one CPU (one host core
each, under TCG): 20 cuts in about the time of 10. One chain of cuts starts
from slot A's first attempt and walks A's attempts towards the rollback;
the other starts with A's attempts spent (boot-count 3), so its first cuts
fall in the rollback's two writes, which a chain from the first attempt
reaches only if its cuts keep landing after the writes (seen under load:
none of 10 did; the chain from boot-count 3 was cut between the rollback's
two writes, A still primary with B's fresh count).
"""

from __future__ import annotations

import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from anklumed.slots import boot_decision, model, selection
from anklumed.stick import SlotName
from tests.vm.test_boot import Kit, booted, kit, persist_dir  # noqa: F401 (the fixture)

pytestmark = pytest.mark.vm(mode="host")

CHAINS = ((7, 0), (8, 3))  # (seed, boot-count the stick starts with)
CUTS = 10  # per chain
MARK = "anklume: counting the attempt"


def state_of(image: Path) -> tuple[SlotName, int, list[str], selection.Decision]:
    # The whole rule, as the initramfs applies it: the last-good stamps and
    # the last-rollback marker too (after B's three attempts following a
    # rollback from A, the boot stays on B degraded, count 4, rather than
    # ping-pong back to A; the bare status rule predicted a rollback there).
    with persist_dir(image) as pdir:
        decision, inputs = boot_decision.decide(pdir)
    state = inputs.state
    return state.primary, state.boot_count, list(state.problems), decision


def test_power_cuts_during_the_boots_persist_writes(kit: Kit) -> None:  # noqa: F811
    with ThreadPoolExecutor(len(CHAINS)) as pool:
        chains = [pool.submit(cut_chain, kit, seed, count) for seed, count in CHAINS]
        for chain in chains:
            chain.result()


def cut_chain(kit: Kit, seed: int, start_count: int) -> None:  # noqa: F811
    image = kit.stick(f"power-cut-{seed}")
    with persist_dir(image) as pdir:
        model.write_boot_count(pdir, start_count)
    rng = random.Random(seed)
    before = state_of(image)
    for number in range(CUTS):
        delay = round(rng.uniform(0.0, 0.5), 3)
        result = kit.boot_cut(image, (MARK, delay))
        where = (f"chain {seed}, cut {number} ({delay} s after the count started): "
                 f"{result.explain()}")
        assert MARK in result.console, where
        after = state_of(image)
        primary, count, problems, _ = after
        assert problems == [], where
        decision = before[3]
        # Between the two writes of a switch, the count is already the new
        # slot's (model.write_primary's order): that state is valid too.
        assert (primary, count) in {(before[0], before[1]), (before[0], decision.boot_count),
                                    (decision.ab_state, decision.boot_count)}, where
        shutil.rmtree(result.rundir, ignore_errors=True)
        before = after  # nothing touches the stick between two boots
    primary, count, problems, decision = before
    result = kit.boot(image)
    report = booted(result)
    assert (report["SLOT"], report["BOOT_COUNT"]) == (decision.boot.value,
                                                      str(decision.boot_count)), \
        f"chain {seed}: {result.explain()}"
    shutil.rmtree(result.rundir)
