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

The leaves of a large chunk are hashed on every core the process may use:
hashlib releases the GIL while it hashes a block of 2 KiB or more, so
threads hash side by side (``veritysetup format`` hashes on one core).
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid as uuidlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

SUPERBLOCK_SIZE = 512
SIGNATURE = b"verity\0\0"
HASH_TYPE_NORMAL = 1  # format 1: salt first
# Below this, handing blocks to another thread costs more than it saves.
PARALLEL_MIN = 256 * 1024


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
    ``threads``: how many threads hash the leaves of a large chunk (the
    calling one included); by default one per core this process may use.
    """

    def __init__(self, params: VerityParams, threads: int | None = None) -> None:
        self.params = params
        self._salted = hashlib.new(params.hash_alg)
        self._salted.update(params.salt)
        self._partial = bytearray()
        self._leaves: list[bytes] = []
        self._threads = max(1, threads or len(os.sched_getaffinity(0)))
        self._pool: ThreadPoolExecutor | None = None  # made at the first large chunk

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
        """The digests of whole blocks, in order: one contiguous part per thread."""
        if self._threads == 1 or len(view) < PARALLEL_MIN:
            return self._leaf_digests(view)
        size = self.params.data_block_size
        per = -(-len(view) // size // self._threads) * size
        parts = [view[i:i + per] for i in range(0, len(view), per)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads - 1,
                                            thread_name_prefix="verity-leaves")
        others: list[Future[list[bytes]]] = [self._pool.submit(self._leaf_digests, part)
                                             for part in parts[1:]]
        try:
            digests = self._leaf_digests(parts[0])
        finally:  # the caller may reuse its buffer once update() returns, even by raising
            for other in others:
                other.exception()
        for other in others:
            digests.extend(other.result())
        return digests

    def _leaf_digests(self, view: memoryview) -> list[bytes]:
        size = self.params.data_block_size
        digest = self._digest
        return [digest(view[i:i + size]) for i in range(0, len(view), size)]

    def _digest(self, block: bytes | bytearray | memoryview) -> bytes:
        h = self._salted.copy()
        h.update(block)
        return h.digest()

    def finish(self) -> VerityResult:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
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
