"""The dm-verity hash tree (format 1), computed while the image streams by.

Byte for byte what ``veritysetup format`` writes to a hash file with the same
parameters: a 512-byte superblock padded to one hash block, then the tree's
levels from the top (one block) down to the leaves. Each data block is hashed
as H(salt || block), each hash block likewise; a hash block holds 2**k digests
(the largest power of two that fits), zero-padded. The root hash is
H(salt || top block), or H(salt || block 0) when there is a single data block.
See cryptsetup's lib/verity/verity_hash.c and the kernel's dm-verity docs.

Only the leaf digests stay in memory while streaming (32 bytes per 4 KiB
block: 8 MiB per GiB of image); the image itself is never held.

The leaves of a large chunk are hashed on every core the process may use,
by the calling thread and helper processes (``verity_leaves``: threads gain
nothing on blocks this small); ``veritysetup format`` hashes on one core.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import time
import uuid as uuidlib
from dataclasses import dataclass

from anklumed.slots.verity_leaves import PART_MAX, LeafHelper, leaf_digests

log = logging.getLogger(__name__)

SUPERBLOCK_SIZE = 512
SIGNATURE = b"verity\0\0"
HASH_TYPE_NORMAL = 1  # format 1: salt first
# Below this, handing blocks to a helper process costs more than it saves.
PARALLEL_MIN = 256 * 1024
# What each helper's share of a round may shrink to (a busy core) and grow to
# (over all helpers: the caller always hashes something).
SHARE_MIN = 1 / 32
SHARE_MAX = 0.9
# How long the caller hashes alone when the other cores were busy (rounds of
# up to PART_MAX per core: 128 MiB on 2 cores).
SOLO_ROUNDS = 16


@dataclass(frozen=True)
class VerityParams:
    salt: bytes
    data_block_size: int = 4096
    hash_block_size: int = 4096
    hash_alg: str = "sha256"
    uuid: str | None = None  # veritysetup makes a random one; so do we when unset

    def __post_init__(self) -> None:
        for size in (self.data_block_size, self.hash_block_size):
            if size < 512 or size & (size - 1) or size > 1 << 19:
                raise ValueError(f"block size {size} is not a power of two in 512..512K")
        if len(self.salt) > 256:
            raise ValueError("the salt is at most 256 bytes")
        hashlib.new(self.hash_alg)  # ValueError for an unknown algorithm


@dataclass(frozen=True)
class VerityResult:
    root_hash: str
    data_blocks: int
    tree: bytes  # the whole hash file: superblock, padding, levels


class VerityHasher:
    """Feed the image with ``update()``; ``finish()`` returns the tree and root hash.

    The image length must be a multiple of the data block size (callers pad
    the last block with zeros, as it will read back from the partition).
    ``cores``: how many cores hash the leaves of a large chunk (the calling
    thread and ``cores - 1`` helper processes, started at the first large
    chunk); by default every core this process may use. ``close()`` (or
    ``finish()``, or leaving a ``with`` block) stops the helpers.
    """

    def __init__(self, params: VerityParams, cores: int | None = None) -> None:
        self.params = params
        self._salted = hashlib.new(params.hash_alg)
        self._salted.update(params.salt)
        self._partial = bytearray()
        self._leaves: list[bytes] = []
        self._cores = max(1, cores or len(os.sched_getaffinity(0)))
        self._helpers: list[LeafHelper] | None = None  # started at the first large chunk
        self._share = 1 / self._cores  # of a round, for each helper: see _balance
        self._solo_rounds = 0
        self._helpers_warm = False

    def __enter__(self) -> VerityHasher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        size = self.params.data_block_size
        if self._partial:
            take = min(size - len(self._partial), len(view))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) == size:
                self._leaves.append(self._digest(self._partial))
                self._partial.clear()
        whole = len(view) - len(view) % size
        self._leaves.extend(self._leaf_digests_parallel(view[:whole]))
        self._partial += view[whole:]

    def _leaf_digests_parallel(self, view: memoryview) -> list[bytes]:
        """The digests of whole blocks, in order: the caller hashes the front
        of each round, every helper an equal part of the rest."""
        helpers = self._started_helpers() if len(view) >= PARALLEL_MIN else []
        helpers = [helper for helper in helpers if helper.up()]
        if not helpers:
            return self._leaf_digests(view)
        size = self.params.data_block_size
        digests: list[bytes] = []
        # Rounds of at most PART_MAX per core: a helper's buffer holds one part.
        step = PART_MAX * (len(helpers) + 1)
        for start in range(0, len(view), step):
            chunk = view[start:start + step]
            if self._solo_rounds:  # the other cores were found busy: alone for a while
                self._solo_rounds -= 1
                digests += self._leaf_digests(chunk)
                continue
            part = min(PART_MAX, int(len(chunk) * self._share) // size * size)
            mine = len(chunk) - part * len(helpers)
            for i, helper in enumerate(helpers):
                helper.submit(chunk[mine + i * part:mine + (i + 1) * part])
            began, began_cpu = time.monotonic(), time.thread_time()
            digests += self._leaf_digests(chunk[:mine])
            hashed, cpu = time.monotonic() - began, time.thread_time() - began_cpu
            waited = 0.0
            for helper in helpers:
                ready = helper.ready()
                waiting = time.monotonic()
                theirs, their_cpu = helper.result()
                digests += theirs
                cpu += their_cpu
                waited = max(waited, 0.0 if ready else time.monotonic() - waiting)
            if self._helpers_warm:  # not the first round: the helpers' start
                self._balance(mine, hashed, part, waited, len(helpers),
                              parallel=cpu / max(time.monotonic() - began, 1e-6))
            self._helpers_warm = True
        return digests

    def _balance(self, mine: int, hashed: float, part: int, waited: float,
                 helpers: int, parallel: float) -> None:
        """Give helpers the share of a round that makes them finish with the
        caller, so the tree is never much slower than on one core.
        ``parallel``: the CPU seconds the round took per second of it; near 1,
        the caller and its helpers took turns on one core (the others busy
        elsewhere): the caller hashes alone for SOLO_ROUNDS rounds, then
        tries its helpers again."""
        if parallel < 1 + helpers / 4:
            self._solo_rounds = SOLO_ROUNDS
            self._share = 1 / (helpers + 1)
        elif waited == 0.0:  # the helpers were done first: they can take more
            self._share = min(SHARE_MAX / helpers, self._share * 1.1)
        elif part and mine and hashed > 0:
            mine_rate, part_rate = mine / hashed, part / (hashed + waited)
            even = part_rate / (mine_rate + helpers * part_rate)
            self._share = max(SHARE_MIN, (self._share + even) / 2)

    def _started_helpers(self) -> list[LeafHelper]:
        """The helper processes, started once; none on one core or when they
        cannot start (the calling thread then hashes alone, as fast as before)."""
        if self._helpers is None:
            self._helpers = []
            try:
                for _ in range(self._cores - 1):
                    self._helpers.append(LeafHelper(self.params.hash_alg, self.params.salt,
                                                    self.params.data_block_size))
            except OSError as e:
                log.warning("the dm-verity tree is hashed on one core: %s", e)
        return self._helpers

    def _leaf_digests(self, view: memoryview) -> list[bytes]:
        return leaf_digests(self._salted, view, self.params.data_block_size)

    def _digest(self, block: bytes | bytearray | memoryview) -> bytes:
        h = self._salted.copy()
        h.update(block)
        return h.digest()

    def close(self) -> None:
        """Stop the helper processes (idempotent)."""
        helpers, self._helpers = self._helpers or [], None
        for helper in helpers:
            helper.close()

    def finish(self) -> VerityResult:
        self.close()
        if self._partial:
            raise ValueError(f"image size is not a multiple of {self.params.data_block_size}")
        if not self._leaves:
            raise ValueError("an empty image has no verity tree")
        levels = self._levels()
        root_input = levels[-1][0] if levels else None
        root = (self._digest(root_input) if root_input is not None else self._leaves[0])
        tree = self._superblock() + b"".join(b"".join(level) for level in reversed(levels))
        return VerityResult(root_hash=root.hex(), data_blocks=len(self._leaves), tree=tree)

    def _levels(self) -> list[list[bytes]]:
        """Hash blocks per level, leaves first; none for a single data block."""
        p = self.params
        digest_size = len(self._leaves[0])
        per_block = 1 << ((p.hash_block_size // digest_size).bit_length() - 1)
        slot = p.hash_block_size // per_block  # bytes each digest occupies
        levels: list[list[bytes]] = []
        digests = self._leaves
        while len(digests) > 1:
            blocks = []
            for i in range(0, len(digests), per_block):
                packed = b"".join(d.ljust(slot, b"\0") for d in digests[i:i + per_block])
                blocks.append(packed.ljust(p.hash_block_size, b"\0"))
            levels.append(blocks)
            digests = [self._digest(block) for block in blocks]
        return levels

    def _superblock(self) -> bytes:
        p = self.params
        ident = uuidlib.UUID(p.uuid) if p.uuid else uuidlib.uuid4()
        sb = struct.pack("<8sII16s32sIIQH6x256s168x", SIGNATURE, 1, HASH_TYPE_NORMAL,
                         ident.bytes, p.hash_alg.encode(), p.data_block_size,
                         p.hash_block_size, len(self._leaves), len(p.salt), p.salt)
        assert len(sb) == SUPERBLOCK_SIZE
        return sb.ljust(p.hash_block_size, b"\0")
