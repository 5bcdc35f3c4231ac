"""The leaves of the dm-verity tree: one digest per data block, on every core.

A leaf is H(salt || 4 KiB block). With SHA-NI a block hashes in about 2.5 µs,
which is too short for threads: hashlib releases the GIL around each block,
and two threads spend their time handing the GIL to each other (measured on
2 free cores: 1.07x of one thread, with 1.5x its CPU time). So the calling
thread hashes one part of a chunk and helper processes hash the others, each
in its own interpreter, reading its part from shared memory (a memfd both
map) and answering with the digests on a pipe: 1.8x of one thread here.
How much each gets follows how fast it answers (``VerityHasher._balance``):
on a machine whose other cores are busy, the caller hashes alone.

This file is also the helper itself: ``python -I -S verity_leaves.py`` (the
standard library only, so it starts in about 15 ms and nothing from the
daemon's path is imported). Nothing secret crosses: the salt is public (it
is in the manifest and in the tree's superblock).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import select
import struct
import subprocess
import sys
import time
from typing import IO, Any

# The most each helper is handed per round (its shared buffer's size).
PART_MAX = 4 * 1024 * 1024
_REQUEST = struct.Struct("<QQ")  # offset and length in the shared buffer
_HELLO = struct.Struct("<QHH")  # block size, salt length, algorithm name length
_CPU = struct.Struct("<d")  # before the digests: the CPU seconds the part took
_UP = b"up"  # the helper's first answer: ready for parts


def leaf_digests(salted: Any, view: memoryview, block_size: int) -> list[bytes]:
    """H(salt || block) of each whole block of ``view``; ``salted`` holds the
    salt already (a hashlib object, copied per block)."""
    digests: list[bytes] = []
    append = digests.append
    for i in range(0, len(view), block_size):
        h = salted.copy()
        h.update(view[i:i + block_size])
        append(h.digest())
    return digests


class LeafHelper:
    """One helper process and its shared buffer. ``submit`` then ``result``."""

    def __init__(self, alg: str, salt: bytes, block_size: int) -> None:
        self.block_size = block_size
        self.digest_size = hashlib.new(alg).digest_size
        self._fd = os.memfd_create("anklume-verity-leaves")  # close-on-exec
        try:
            os.ftruncate(self._fd, PART_MAX)
            self._shared = mmap.mmap(self._fd, PART_MAX)
            # Not anklumed.command.run: that runs a command to its end; this
            # one lives as long as the hasher and talks over its pipes.
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(self._fd)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=[self._fd],
                env={"LANG": "C.UTF-8"}, bufsize=0)
        except BaseException:
            os.close(self._fd)
            raise
        self._pending = 0
        self._up = False
        self._send(_HELLO.pack(block_size, len(salt), len(alg)) + salt + alg.encode())

    def up(self) -> bool:
        """Whether the helper has started (it says so once): until then the
        caller hashes alone rather than wait for an interpreter to start."""
        if not self._up and self.ready():
            self._up = self._receive(len(_UP)) == _UP
        return self._up

    def submit(self, view: memoryview) -> None:
        """Hand a part (whole blocks, at most PART_MAX) to the helper."""
        self._shared[:len(view)] = view
        self._pending = len(view) // self.block_size
        self._send(_REQUEST.pack(0, len(view)))

    def ready(self) -> bool:
        """Whether the helper has begun answering (it answers a part at once)."""
        assert self._process.stdout is not None
        return bool(select.select([self._process.stdout], [], [], 0)[0])

    def result(self) -> tuple[list[bytes], float]:
        """The digests of the part last submitted, in order, and the CPU time
        the helper spent on them."""
        size = self.digest_size
        data = self._receive(_CPU.size + self._pending * size)
        self._pending = 0
        (cpu,) = _CPU.unpack_from(data)
        return [data[i:i + size] for i in range(_CPU.size, len(data), size)], cpu

    def close(self) -> None:
        """Stop the helper and free the buffer. It keeps nothing worth a clean
        exit, and an interpreter's exit took 13-21 ms on a busy machine: killed."""
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()
        self._shared.close()
        os.close(self._fd)

    def _send(self, data: bytes) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(data)
        except BrokenPipeError:
            raise self._stopped() from None

    def _receive(self, size: int) -> bytes:
        assert self._process.stdout is not None
        data = _read_exactly(self._process.stdout, size)
        if len(data) < size:
            raise self._stopped()
        return data

    def _stopped(self) -> OSError:
        status = self._process.poll()
        return OSError(f"the dm-verity leaf hasher (pid {self._process.pid}) stopped"
                       f" (exit status {status})")


def _read_exactly(stream: IO[bytes] | int, size: int) -> bytes:
    """``size`` bytes, or fewer only at the end of the stream (a file or an fd)."""
    parts = []
    while size:
        part = os.read(stream, size) if isinstance(stream, int) else stream.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _serve(fd: int) -> None:
    """The helper's side: hash the parts it is sent until its stdin closes."""
    requests, answers = 0, 1  # stdin, stdout
    hello = _read_exactly(requests, _HELLO.size)
    block_size, salt_len, alg_len = _HELLO.unpack(hello)
    salt_alg = _read_exactly(requests, salt_len + alg_len)
    salted = hashlib.new(salt_alg[salt_len:].decode())
    salted.update(salt_alg[:salt_len])
    shared = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    view = memoryview(shared)
    os.write(answers, _UP)
    while len(request := _read_exactly(requests, _REQUEST.size)) == _REQUEST.size:
        offset, length = _REQUEST.unpack(request)
        began = time.thread_time()
        digests = leaf_digests(salted, view[offset:offset + length], block_size)
        answer = memoryview(_CPU.pack(time.thread_time() - began) + b"".join(digests))
        while answer:
            answer = answer[os.write(answers, answer):]


if __name__ == "__main__":
    # A broken pipe: the hasher closed, its caller stopped; nothing to say.
    with contextlib.suppress(BrokenPipeError):
        _serve(int(sys.argv[1]))
