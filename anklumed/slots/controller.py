"""Manual and automatic control of the slots: mark good/bad, rollback, set primary.

Each operation is one PERSIST transaction run in a worker thread (mount, read,
check, write atomically, read back, unmount), serialised by a lock. The last
state read is cached so status reads never wait for the stick; after any
failure it is read again, so the status never shows a change that did not
happen. A meta that could not be read is never rewritten: what is not read
would be lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from anklumed import events
from anklumed.errors import AnklumeError, Failed, InvalidArgument, NotFound
from anklumed.handoff import Handoff
from anklumed.persist import PersistDir, PersistStore
from anklumed.slots import model
from anklumed.slots.assessment import Assessment, assess
from anklumed.slots.boot_menu import BOOT_LOADER_REASON, BootMenu
from anklumed.slots.model import Rollback, SlotsState, SlotStatus
from anklumed.stick import SlotName

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def check_can_become_primary(state: SlotsState, slot: SlotName, force: bool) -> None:
    """Refuse to point ab-state at a slot that cannot boot."""
    status = state.meta[slot].status
    if status is SlotStatus.EMPTY:
        raise InvalidArgument(f"slot {slot} is empty: there is no system in it to boot")
    if status is not SlotStatus.OK and not force:
        raise InvalidArgument(
            f"slot {slot} is {status.value}, not ok: it may not boot. "
            "Use --force to make it primary anyway"
        )


def check_meta_readable(state: SlotsState, slot: SlotName, doing: str) -> None:
    name = model.meta_file(slot)
    if name in state.unreadable:
        raise Failed(f"{name} cannot be read, so {doing} would lose what it holds; it was left "
                     "as it is: repair or remove it (anklumectl status says what is wrong)")


class SlotController:
    def __init__(
        self,
        store: PersistStore,
        handoff: Handoff,
        boot_time: datetime | None,
        clock: Clock = _utcnow,
    ) -> None:
        self.store = store
        self.handoff = handoff
        self.boot_time = boot_time
        self.clock = clock
        self.state: SlotsState | None = None
        self.error: str | None = None
        self._lock = asyncio.Lock()
        self.listeners: list[Callable[[], None]] = []
        # The ESP's boot menu, kept in step with PERSIST (None: not managed here).
        self.menu: BootMenu | None = None

    @property
    def assessment(self) -> Assessment:
        return assess(self.state, self.handoff, self.boot_time, self.error)

    async def refresh(self) -> None:
        await self._transaction(lambda pdir, state: None, quiet=True)

    async def start(self, also: Callable[[PersistDir], None] | None = None) -> None:
        """Read PERSIST once; tidy after a crash; record a rollback the
        initramfs did. ``also`` reads what another component needs in the same
        transaction, after this one's writes: each mount and unmount is a
        process and an ext4 mount, which a slow machine pays at every boot
        (``also`` must not raise: its failure would be taken for PERSIST's)."""
        def on_start(pdir: PersistDir, state: SlotsState) -> None:
            self._on_start(pdir, state)
            if also is not None:
                also(pdir)

        await self._transaction(on_start, quiet=True)

    def _on_start(self, pdir: PersistDir, state: SlotsState) -> None:
        for name in pdir.clean_temporaries():
            log.warning("removed %s left by an interrupted write", name)
        source = self.handoff.rollback_from
        if source and model.meta_file(source) in state.unreadable:
            log.warning("slot %s was rolled back from, but its meta cannot be read: "
                        "not marking it failed", source)
        elif self.handoff.rollback and source and state.meta[source].status is SlotStatus.OK:
            log.warning("slot %s failed to boot and was rolled back from; marking it failed",
                        source)
            meta = state.meta[source].model_copy(update={"status": SlotStatus.FAILED})
            model.write_meta(pdir, source, meta)
        if self.menu is None:
            return
        self.menu.follow_at_start(pdir, state.primary, self.handoff.slot,
                                  lambda: self._record_boot_loader_rollback(pdir, state))

    def _record_boot_loader_rollback(self, pdir: PersistDir, state: SlotsState) -> None:
        """systemd-boot used the primary's tries (boots that died before the
        initramfs, or never completed) and booted the other slot's entry by
        itself, which wrote nothing: PERSIST is told here, in the initramfs's
        order (last-rollback, boot-count, ab-state), and this boot counts as
        the new primary's first attempt."""
        source, target = state.primary, state.primary.other
        log.warning("the boot loader used slot %s's tries and booted slot %s: recording the "
                    "rollback", source, target)
        entries = []
        if model.meta_file(source) not in state.unreadable and \
                state.meta[source].status is SlotStatus.OK:
            entries.append(model.meta_entry(source, state.meta[source].model_copy(
                update={"status": SlotStatus.FAILED})))
        rollback = Rollback(from_slot=source, to_slot=target, at=self.clock(),
                            reason=BOOT_LOADER_REASON)
        pdir.write_files([*entries, model.rollback_entry(rollback),
                          *model.primary_entries(target, 1)])
        self.handoff = self.handoff.model_copy(update={"rollback": True,
                                                       "rollback_from": source})

    async def mark_good(self) -> None:
        booted = self.handoff.slot
        if booted is None:
            raise NotFound("the booted slot is unknown, so it cannot be marked good")

        def change(pdir: PersistDir, state: SlotsState) -> None:
            counted = booted is state.primary
            if counted:
                # First and on its own: the count is what makes the boot good for
                # the initramfs, so a damaged meta must not stand in its way.
                # Written even when it reads 0: the file may hold garbage read as 0.
                model.write_boot_count(pdir, 0)
            try:
                check_meta_readable(state, booted, "stamping it good")
                meta = state.meta[booted].model_copy(
                    update={"status": SlotStatus.OK, "last_good_at": self.clock()}
                )
                model.write_meta(pdir, booted, meta)
            except AnklumeError as e:
                if not counted:
                    raise
                raise Failed(f"the boot is marked good (boot-count 0), but slot {booted} "
                             f"was not stamped: {e}") from None
            finally:
                if counted and self.menu is not None:
                    self.menu.follow(pdir, renew=True)  # after PERSIST: the counter anew

        await self._transaction(change)
        events.boot_marked_good(booted)

    async def rollback(self, force: bool) -> SlotName:
        """Make the other slot primary with a fresh count; returns it."""
        target: list[SlotName] = []

        def change(pdir: PersistDir, state: SlotsState) -> None:
            to = state.primary.other
            check_can_become_primary(state, to, force)
            rollback = Rollback(from_slot=state.primary, to_slot=to, at=self.clock(),
                                reason="manual")
            # One write: refused as a whole (read-only, full, a directory in the
            # way) before any file changes.
            pdir.write_files([*model.primary_entries(to, 0), model.rollback_entry(rollback)])
            target.append(to)
            self._follow(pdir)

        await self._transaction(change)
        events.rollback_requested(target[0].other, target[0])
        return target[0]

    async def set_primary(self, slot: SlotName, force: bool) -> None:
        def change(pdir: PersistDir, state: SlotsState) -> None:
            if slot is state.primary:
                return
            check_can_become_primary(state, slot, force)
            model.write_primary(pdir, slot, 0)
            self._follow(pdir)

        await self._transaction(change)
        log.info("slot %s set as primary", slot)

    async def mark_bad(self, slot: SlotName) -> None:
        def change(pdir: PersistDir, state: SlotsState) -> None:
            meta = state.meta[slot]
            if meta.status is SlotStatus.EMPTY:
                raise InvalidArgument(f"slot {slot} is empty: there is nothing to mark bad")
            check_meta_readable(state, slot, "marking it bad")
            entries = [model.meta_entry(slot, meta.model_copy(
                update={"status": SlotStatus.FAILED}))]
            other = slot.other
            if slot is state.primary and state.meta[other].status is SlotStatus.OK:
                # Do not leave a slot marked bad as the next boot.
                entries += model.primary_entries(other, 0)
            pdir.write_files(entries)
            self._follow(pdir)

        await self._transaction(change)
        log.info("slot %s marked bad", slot)

    def _follow(self, pdir: PersistDir) -> None:
        if self.menu is not None:
            self.menu.follow(pdir)

    async def transact(self, change: Callable[[PersistDir, SlotsState], None]) -> None:
        """One PERSIST transaction for another component (the updater)."""
        await self._transaction(change)

    async def _transaction(
        self, change: Callable[[PersistDir, SlotsState], None], quiet: bool = False
    ) -> None:
        async with self._lock:
            try:
                self.state = await asyncio.to_thread(self._run, change)
                self.error = None
            except Exception as e:
                # Whatever failed, and wherever: show what is really on the
                # stick now (or that it is gone), never what was meant to be.
                await asyncio.to_thread(self._reload_quietly)
                if not quiet:
                    raise
                if isinstance(e, AnklumeError):
                    log.error("%s", e)
                else:  # a bug: keep the daemon up, the traceback in the journal
                    log.exception("reading PERSIST failed unexpectedly")
            finally:
                self._notify()

    def _run(self, change: Callable[[PersistDir, SlotsState], None]) -> SlotsState:
        with self.store.transaction() as pdir:
            state = model.read_slots_state(pdir)
            change(pdir, state)
            return model.read_slots_state(pdir)

    def _reload_quietly(self) -> None:
        try:
            with self.store.transaction() as pdir:
                self.state, self.error = model.read_slots_state(pdir), None
        except AnklumeError as e:
            self.state, self.error = None, str(e)
        except Exception:
            log.exception("reading PERSIST failed unexpectedly")
            self.state, self.error = None, "ANKLUME-PERSIST cannot be read (see the journal)"

    def _notify(self) -> None:
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                log.exception("a state listener failed")
