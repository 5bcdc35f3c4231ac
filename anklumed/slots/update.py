"""Writing a new OS into the slot that is not running (DESIGN.md §4).

The order is the contract and is never changed:
refuse the booted slot → check size and compatibility → mark the target
pending → stream the image to the partition, hashing (sha256 and the
dm-verity tree) in the same pass → fsync → read back and compare → compare
the root hash with the pin and the manifest → the slot's kernel (UKI) to
the ESP, read back → write slots/T.verity, slots/T.manifest (+ .sig) and
slots/T.meta (ok) → ab-state=T, boot-count=0 → the ESP's boot entries for T
(docs/boot-chain.md).

Until the last step the booted slot and ab-state are untouched, and the
initramfs never boots a pending or failed slot: a failure, a cancel or a
power cut at any instant leaves the stick booting what it booted before.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from anklumed import events
from anklumed.command import CommandError, run
from anklumed.errors import AnklumeError, InvalidArgument, NotFound, VerificationFailed
from anklumed.jobs import Job
from anklumed.persist import PersistDir
from anklumed.slots import kernel_signer, model
from anklumed.slots.bundle import CHUNK, KeptManifest, Manifest, check_installable
from anklumed.slots.controller import SlotController
from anklumed.slots.esp import Esp, EspError
from anklumed.slots.local_files import LocalFiles, Reader
from anklumed.slots.model import SlotMeta, SlotsState, SlotStatus
from anklumed.slots.source import (
    Bundle,
    HttpSettings,
    ImageStream,
    open_bundle,
    open_local_source,
    shown,
)
from anklumed.slots.verity_tree import VerityHasher, VerityResult
from anklumed.stick import EFI_LABEL, BootStick, SlotName

log = logging.getLogger(__name__)
ALIGN = 4096


@dataclass(frozen=True)
class UpdateRequest:
    source: str  # a path or URL; with ``files``, only the name shown and recorded
    verify_hash: str | None = None
    allow_downgrade: bool = False
    files: LocalFiles | None = None  # a local bundle passed open by the caller
    reader: Reader | None = None  # whose rights open a local path (None: anklumed's)


def check_request(bundle: Bundle, request: UpdateRequest, state: SlotsState,
                  target: SlotName, booted: SlotName | None, slot_size: int,
                  compatible: str) -> None:
    """Everything that can be refused before a single byte is written."""
    m = bundle.manifest
    if booted is None:
        raise InvalidArgument("the running slot is unknown: refusing to write either slot")
    if target is booted:
        raise InvalidArgument(f"slot {target} is running: an update writes the other slot")
    if state.primary is target and state.meta[target].status is SlotStatus.OK:
        raise InvalidArgument(f"slot {target} is the next boot; make slot {booted} primary "
                              "first (anklumectl set-primary)")
    if m.padded_size > slot_size:
        raise InvalidArgument(f"the image ({m.size} bytes) does not fit slot {target} "
                              f"({slot_size} bytes)")
    if request.verify_hash is not None and request.verify_hash.lower() != m.root_hash:
        raise VerificationFailed("the bundle's root hash is not the one given with "
                                 f"--verify-hash ({request.verify_hash[:16]}…)")
    if bundle.signed_by is None and request.verify_hash is None:
        # Unsigned, the image is only trusted for a root hash the user vouches for.
        raise VerificationFailed("the bundle is not signed: give its root hash with "
                                 "--verify-hash to install it")
    check_installable(m, compatible, state.meta[booted].version, request.allow_downgrade)


def _recorded(source: str) -> str:
    """The source as stored in the meta: the initramfs sources these files with a
    shell, so nothing but plain URL characters may reach it."""
    return re.sub(r"[^A-Za-z0-9._~:/@%+=,-]", "_", shown(source))[:200]


def mark_pending(pdir: PersistDir, target: SlotName, manifest: Manifest, source: str) -> None:
    meta = SlotMeta(status=SlotStatus.PENDING, version=manifest.version, size=manifest.size,
                    sha256=manifest.sha256, source=_recorded(source))
    model.write_meta(pdir, target, meta)


def mark_failed(pdir: PersistDir, target: SlotName, previous: SlotMeta,
                touched: bool) -> None:
    """After a failure or a cancel before activation. Once a byte reached the
    partition the slot is not bootable (failed); before that, it still holds
    what it held and gets its old meta back: a cancel then changes nothing."""
    state = model.read_slots_state(pdir)
    if state.meta[target].status is SlotStatus.PENDING:
        meta = state.meta[target].model_copy(update={"status": SlotStatus.FAILED}) \
            if touched else previous
        model.write_meta(pdir, target, meta)
        if touched:
            # The slot's old content is gone: its manifest describes nothing.
            # Kept while untouched, since the old meta comes back with it.
            pdir.remove(model.signature_file(target))
            pdir.remove(model.manifest_file(target))


def activate(pdir: PersistDir, target: SlotName, manifest: Manifest, kept: KeptManifest,
             tree: bytes, source: str, now: datetime) -> None:
    """The last steps, in order: tree, manifest and signature, meta (ok), then
    ab-state and boot-count. The meta is pending until its turn, so the
    initramfs never pairs an ok meta with another bundle's manifest."""
    pdir.write_bytes(model.verity_file(target), tree)
    pdir.write_bytes(model.manifest_file(target), kept.text)
    if kept.signature is not None:
        pdir.write_bytes(model.signature_file(target), kept.signature)
    else:  # an unsigned bundle: no older signature may stay beside its manifest
        pdir.remove(model.signature_file(target))
    meta = SlotMeta(status=SlotStatus.OK, version=manifest.version, size=manifest.size,
                    sha256=manifest.sha256, root_hash=manifest.root_hash, salt=manifest.salt,
                    data_block_size=manifest.data_block_size,
                    hash_block_size=manifest.hash_block_size, hash_alg=manifest.hash_alg,
                    installed_at=now, activated_at=now, source=_recorded(source))
    model.write_meta(pdir, target, meta)
    model.write_primary(pdir, target, 0)


def write_slot(job: Job, bundle: Bundle, device: Path,
               touched: threading.Event | None = None) -> VerityResult:
    """Stream the image to ``device``, then fsync and read it back.

    One pass over the stream computes the dm-verity tree while a second
    thread writes: the root hash (in the signed manifest) authenticates every
    byte, so no separate checksum pass is needed there. The read-back then
    proves the device returns the image's sha256. Returns the tree. Raises
    VerificationFailed for a short or altered image, or a device that does
    not return what was written. Cancel is honoured between chunks.
    ``touched`` is set before the first byte is written to the device.

    The writes bypass the page cache (O_DIRECT): a live system that may run
    from RAM does not fill it with gigabytes of dirty pages, progress counts
    what reached the device, and the fsync that follows is short.
    """
    m = bundle.manifest
    src = bundle.open_image(job.pause)
    try:
        # O_EXCL on a block device: refused while mounted or opened exclusively.
        fd = os.open(device, os.O_WRONLY | os.O_EXCL | os.O_DIRECT | os.O_CLOEXEC)
        try:
            result = _stream(job, src, fd, m, touched)
            job.progress("syncing", m.size, m.size)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        src.close()
    job.check_cancelled()
    read_back(job, device, m)
    return result


def _stream(job: Job, src: ImageStream, fd: int, m: Manifest,
            touched: threading.Event | None) -> VerityResult:
    """Write the image and its zero padding; hash each chunk while it is written.

    Two page-aligned buffers take turns: one is filled from the source and
    hashed while the other is being written.
    """
    hasher = VerityHasher(m.verity_params())
    buffers = [mmap.mmap(-1, CHUNK), mmap.mmap(-1, CHUNK)]
    try:
        with hasher, ThreadPoolExecutor(1, thread_name_prefix="slot-writer") as writer:
            in_flight: Future[None] | None = None
            offset, index = 0, 0
            while offset < m.padded_size:
                job.check_cancelled()
                length = _fill(src, buffers[index], offset, m)
                if in_flight is not None:
                    in_flight.result()  # one write at a time, in order
                if touched is not None:
                    touched.set()
                in_flight = writer.submit(_write_at, fd, buffers[index], length, offset)
                hasher.update(memoryview(buffers[index])[:length])
                offset += length
                index = 1 - index
                job.progress("writing", min(offset, m.size), m.size)
            if in_flight is not None:
                in_flight.result()
    finally:
        for buffer in buffers:
            with contextlib.suppress(BufferError):  # never hide the error that got here
                buffer.close()
    result = hasher.finish()
    if result.root_hash != m.root_hash:
        raise VerificationFailed("the image does not match its manifest "
                                 "(dm-verity root hash differs)")
    return result


def _fill(src: ImageStream, buffer: mmap.mmap, offset: int, m: Manifest) -> int:
    """Put the next chunk of the image, then of its zero padding, in ``buffer``."""
    length = min(CHUNK, m.padded_size - offset)
    image_end = min(length, m.size - offset)  # where the image stops in this chunk
    got = 0
    while got < image_end:
        data = src.read(image_end - got)
        if not data:
            raise VerificationFailed(f"the image is truncated: {offset + got} of {m.size} bytes")
        buffer[got:got + len(data)] = data
        got += len(data)
    if offset + length >= m.size:
        if src.read(1):
            raise VerificationFailed("the image is longer than its manifest says")
        buffer[got:length] = bytes(length - got)
    return length


def _write_at(fd: int, buffer: mmap.mmap, length: int, offset: int) -> None:
    if length % ALIGN:
        # Only a last chunk of 512-byte verity blocks: O_DIRECT could refuse it.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
    done = 0
    while done < length:
        done += os.pwrite(fd, memoryview(buffer)[done:length], offset + done)


def read_back(job: Job, device: Path, m: Manifest) -> None:
    """sha256 of what the device really holds (O_DIRECT: not the page cache).

    Two aligned buffers: the next chunk is read while this one is hashed.
    """
    sha = hashlib.sha256()
    buffers = [mmap.mmap(-1, CHUNK), mmap.mmap(-1, CHUNK)]
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)

    def read(index: int, offset: int) -> int:
        want = min(CHUNK, -(-(m.size - offset) // ALIGN) * ALIGN)
        return os.preadv(fd, [memoryview(buffers[index])[:want]], offset)

    try:
        with ThreadPoolExecutor(1, thread_name_prefix="slot-reader") as reader:
            done, index = 0, 0
            pending = reader.submit(read, index, 0)
            while done < m.size:
                job.check_cancelled()
                got = pending.result()
                if got <= 0:
                    raise VerificationFailed(f"{device} ended at {done} bytes while reading back")
                useful = min(got, m.size - done)
                if done + useful < m.size:
                    pending = reader.submit(read, 1 - index, done + useful)
                sha.update(memoryview(buffers[index])[:useful])
                done += useful
                index = 1 - index
                job.progress("verifying", done, m.size)
    finally:
        os.close(fd)
        for buffer in buffers:
            buffer.close()
    if sha.hexdigest() != m.sha256:
        raise VerificationFailed(f"{device} does not hold what was written to it "
                                 "(read-back mismatch): the stick may be failing")


def stick_esp(stick: BootStick) -> Esp | None:
    """The stick's ESP, if the kernel has a device for it."""
    partition = stick.partitions.get(EFI_LABEL)
    return Esp(partition.device) if partition and partition.device else None


def check_kernel(m: Manifest, esp: Esp | None, target: SlotName) -> bool:
    """Whether the update puts a kernel on the ESP. A stick whose ESP boots
    each slot's own UKI cannot take a bundle without one: its slot would
    have no kernel (refused before anything is written)."""
    if esp is None:
        return False
    if m.uki is None:
        if esp.slots_with_kernel():
            raise InvalidArgument("this bundle carries no kernel (no UKI in its manifest), and "
                                  "this stick boots each slot with its own: build the bundle "
                                  "with anklume-image")
        return False
    return True


def install_kernel(esp: Esp, device: Path, target: SlotName, m: Manifest) -> None:
    """The slot's UKI, read out of the slot just written and verified, to the
    ESP; checked there against the signed manifest's UKI_SHA256."""
    if m.uki is None or m.uki_sha256 is None:
        return
    uki = m.uki

    def copy(esp_device: Path, path: str) -> None:
        # unsquashfs reads the partition (its sha256 was just compared with
        # the manifest); mcopy writes the ESP; nothing is mounted.
        run(["sh", "-c", 'unsquashfs -cat "$0" "$1" | mcopy -i "$2" - "::/$3"',
             device, uki, esp_device, path], timeout=600, env={"MTOOLS_SKIP_CHECK": "1"})

    try:
        esp.install_uki(target, copy, m.uki_sha256, m.uki_size)
    except CommandError as e:
        raise EspError(f"cannot copy slot {target}'s kernel to the ESP: "
                       f"{e.stderr.strip()[-200:]}") from None


class Updater:
    """Runs an update as a job: checks, pending, write, verify, activate."""

    def __init__(self, slots: SlotController, stick: Callable[[], BootStick | None],
                 booted: SlotName | None, compatible: str, keys_dir: Path,
                 clock: Callable[[], datetime], http: HttpSettings,
                 machine: kernel_signer.Machine) -> None:
        self.slots = slots
        self.stick = stick
        self.booted = booted
        self.compatible = compatible
        self.keys_dir = keys_dir
        self.clock = clock
        self.http = http
        self.machine = machine

    async def run(self, job: Job, request: UpdateRequest) -> str:
        """The update; a local bundle's files are closed once it ends, however
        it ends (but for a shutdown cancelling the task, while a worker thread
        may still read them)."""
        job.progress("checking")
        files = request.files or await asyncio.to_thread(
            open_local_source, request.source, request.reader)
        try:
            result = await self._run(job, request, files)
        except asyncio.CancelledError:
            raise
        except BaseException:
            if files is not None:
                files.close()
            raise
        if files is not None:
            files.close()
        return result

    async def _run(self, job: Job, request: UpdateRequest, files: LocalFiles | None) -> str:
        bundle = await asyncio.to_thread(open_bundle, request.source, self.keys_dir,
                                         self.http, job.pause, files)
        await self.slots.refresh()
        stick, state = self.stick(), self.slots.state
        if stick is None or state is None:
            raise NotFound("the boot stick is not available: "
                           f"{self.slots.error or 'it was not found'}")
        target = (self.booted or SlotName.A).other
        partition = stick.slot(target)
        if partition.device is None:
            raise NotFound(f"the kernel has no block device for {partition.label}")
        check_request(bundle, request, state, target, self.booted, partition.size,
                      self.compatible)
        esp = stick_esp(stick)
        with_kernel = await asyncio.to_thread(check_kernel, bundle.manifest, esp, target)
        job.check_cancelled()
        m = bundle.manifest
        previous = state.meta[target]
        touched = threading.Event()
        await self.slots.transact(lambda pdir, _st: mark_pending(pdir, target, m,
                                                                 request.source))
        try:
            result = await asyncio.to_thread(write_slot, job, bundle, partition.device,
                                             touched)
            if with_kernel and esp is not None and m.uki is not None:
                job.progress("kernel")
                await asyncio.to_thread(kernel_signer.check_new_kernel, partition.device,
                                        m.uki, self.machine)
                await asyncio.to_thread(install_kernel, esp, partition.device, target, m)
            job.commit()
            job.progress("activating")
            now = self.clock()
            kept = KeptManifest(bundle.manifest_bytes, bundle.signature)
            await self.slots.transact(lambda pdir, _st: activate(
                pdir, target, m, kept, result.tree, request.source, now))
        except BaseException:
            if job.cancellable:  # failed before activation: the target is not bootable
                with contextlib.suppress(AnklumeError):
                    await self.slots.transact(lambda pdir, _st: mark_failed(
                        pdir, target, previous, touched.is_set()))
            raise
        signed = f", signed by {bundle.signed_by}" if bundle.signed_by else ", unsigned"
        events.update_installed(target, m.version, bundle.signed_by)
        menu = self.slots.menu
        if menu is not None:
            # After activation nothing fails the update: a menu that cannot be
            # rewritten is logged, and compared again at the next start.
            await self.slots.transact(lambda pdir, _st: menu.follow(pdir, renew=True))
        return f"slot {target} holds {m.version}{signed}; it boots next"
