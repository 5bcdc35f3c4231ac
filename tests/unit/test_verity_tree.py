"""The streamed dm-verity tree against ``veritysetup format``, byte for byte."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from anklumed.slots.verity_tree import SOLO_ROUNDS, VerityHasher, VerityParams

pytestmark = pytest.mark.skipif(shutil.which("veritysetup") is None,
                                reason="needs veritysetup (cryptsetup-bin)")
UUID = "0f3c1a9e-5b1d-4c44-9a43-1c9e8a5f7b21"


def reference(image: Path, tmp: Path, salt: bytes, data_bs: int = 4096,
              hash_bs: int = 4096, alg: str = "sha256") -> tuple[str, bytes]:
    tree = tmp / "ref.verity"
    out = subprocess.run(
        ["veritysetup", "format", str(image), str(tree), f"--salt={salt.hex() or '-'}",
         f"--uuid={UUID}", f"--data-block-size={data_bs}", f"--hash-block-size={hash_bs}",
         f"--hash={alg}"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Root hash:\s*(\S+)", out)
    assert match is not None
    return match.group(1), tree.read_bytes()


def ours(data: bytes, salt: bytes, chunk: int, cores: int | None = None,
         **kwargs: int | str) -> tuple[str, bytes]:
    hasher = VerityHasher(VerityParams(salt=salt, uuid=UUID, **kwargs),  # type: ignore[arg-type]
                          cores=cores)
    for i in range(0, len(data), chunk):
        hasher.update(data[i:i + chunk])
    result = hasher.finish()
    assert result.data_blocks == len(data) // int(kwargs.get("data_block_size", 4096))
    return result.root_hash, result.tree


@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 1000, 128 * 128, 128 * 128 + 1])
def test_tree_is_byte_identical(tmp_path: Path, blocks: int) -> None:
    rng = random.Random(blocks)
    data = rng.randbytes(blocks * 4096)
    salt = rng.randbytes(32)
    image = tmp_path / "image"
    image.write_bytes(data)
    # Odd chunk sizes: the stream is cut anywhere, never at block boundaries.
    assert ours(data, salt, chunk=rng.choice([1000, 4097, 65536 + 3])) == \
        reference(image, tmp_path, salt)


def helper_processes(hasher: VerityHasher) -> list[int]:
    """The pids of the hasher's helpers that are running now (ours, alive)."""
    pids = [helper._process.pid for helper in hasher._helpers or []]
    return [pid for pid in pids if Path(f"/proc/{pid}/cmdline").read_bytes().find(
        b"verity_leaves.py") >= 0 and os.waitpid(pid, os.WNOHANG) == (0, 0)]


def wait_until_up(hasher: VerityHasher) -> None:
    """Until the hasher's helpers have started (until then it hashes alone)."""
    deadline = time.monotonic() + 30
    while not all(helper.up() for helper in hasher._helpers or []):
        assert time.monotonic() < deadline, "the helpers did not start"
        time.sleep(0.01)


@pytest.mark.parametrize("cores", [2, 3])
def test_leaves_of_large_chunks_are_hashed_by_helper_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
    in_caller = [0]
    serial = VerityHasher._leaf_digests

    def counting(self: VerityHasher, view: memoryview) -> list[bytes]:
        in_caller[0] += len(view) // 4096
        return serial(self, view)

    monkeypatch.setattr(VerityHasher, "_leaf_digests", counting)
    rng = random.Random(cores)
    data = rng.randbytes(3001 * 4096)
    image = tmp_path / "image"
    image.write_bytes(data)
    hasher = VerityHasher(VerityParams(salt=b"salt", uuid=UUID), cores=cores)
    # Chunks of 1 MiB and 5 bytes: parts of uneven length, a block cut in two;
    # then one chunk larger than a round (every helper's buffer full, twice).
    cut = 1001 * 4096 + 3
    for i in range(0, cut, (1 << 20) + 5):
        hasher.update(data[i:min(i + (1 << 20) + 5, cut)])
        wait_until_up(hasher)
    helpers = helper_processes(hasher)
    hasher.update(data[cut:])
    result = hasher.finish()
    assert (result.root_hash, result.tree) == reference(image, tmp_path, b"salt")
    assert len(helpers) == cores - 1 and os.getpid() not in helpers
    # The helpers hashed some of the blocks (how many depends on the load).
    assert in_caller[0] < 3001
    for pid in helpers:  # stopped and reaped by finish()
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_a_helper_that_dies_is_an_error_not_a_wrong_tree() -> None:
    data = random.Random(1).randbytes(1 << 20)
    with VerityHasher(VerityParams(salt=b"salt"), cores=2) as hasher:
        hasher.update(data)
        wait_until_up(hasher)
        (pid,) = helper_processes(hasher)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(OSError, match=rf"leaf hasher \(pid {pid}\) stopped"):
            hasher.update(data)
    assert hasher._helpers is None


def test_a_helper_on_a_busy_core_is_left_alone_for_a_while(tmp_path: Path) -> None:
    mib4 = 4 << 20
    data = random.Random(3).randbytes(4 * mib4)
    image = tmp_path / "image"
    image.write_bytes(data)
    hasher = VerityHasher(VerityParams(salt=b"salt", uuid=UUID), cores=2)
    hasher.update(data[:mib4])
    wait_until_up(hasher)
    hasher.update(data[mib4:2 * mib4])  # the helper's first round (not judged)
    (pid,) = helper_processes(hasher)
    # The helper is stopped for 0.5 s: the caller waits, as for a busy core,
    # then hashes alone for a while.
    os.kill(pid, signal.SIGSTOP)
    threading.Timer(0.5, os.kill, (pid, signal.SIGCONT)).start()
    hasher.update(data[2 * mib4:3 * mib4])
    assert hasher._solo_rounds == SOLO_ROUNDS
    hasher.update(data[3 * mib4:])
    result = hasher.finish()
    assert (result.root_hash, result.tree) == reference(image, tmp_path, b"salt")


def test_without_helpers_the_caller_hashes_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    data = random.Random(2).randbytes(300 * 4096)
    image = tmp_path / "image"
    image.write_bytes(data)
    assert ours(data, b"salt", chunk=len(data), cores=2) == \
        reference(image, tmp_path, b"salt")
    assert "hashed on one core" in caplog.text


@pytest.mark.parametrize("chunk", [7777, (1 << 20) + 7])  # in the caller, on helpers
@pytest.mark.parametrize(("data_bs", "hash_bs", "alg", "salt_len"), [
    (512, 512, "sha256", 32), (4096, 1024, "sha256", 0), (1024, 4096, "sha512", 256),
    (4096, 4096, "sha1", 16), (512, 4096, "sha512", 8),
])
def test_other_parameters(tmp_path: Path, data_bs: int, hash_bs: int, alg: str,
                          salt_len: int, chunk: int) -> None:
    rng = random.Random(data_bs + hash_bs + salt_len)
    data = rng.randbytes(data_bs * 3000)
    salt = rng.randbytes(salt_len)
    image = tmp_path / "image"
    image.write_bytes(data)
    assert ours(data, salt, chunk=chunk, cores=2, data_block_size=data_bs, hash_block_size=hash_bs,
                hash_alg=alg) == reference(image, tmp_path, salt, data_bs, hash_bs, alg)


def test_a_tail_shorter_than_a_block_is_refused_not_ignored(tmp_path: Path) -> None:
    # veritysetup silently leaves such a tail unverified; the updater pads the
    # last block with zeros instead (as it reads back from the partition).
    hasher = VerityHasher(VerityParams(salt=b"s"))
    hasher.update(b"x" * 5000)
    with pytest.raises(ValueError, match="multiple"):
        hasher.finish()
    padded = (b"x" * 5000).ljust(8192, b"\0")
    image = tmp_path / "image"
    image.write_bytes(padded)
    assert ours(padded, b"s", chunk=5000) == reference(image, tmp_path, b"s")


def test_empty_image_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        VerityHasher(VerityParams(salt=b"s")).finish()


@pytest.mark.parametrize("bad", [{"data_block_size": 3000}, {"hash_block_size": 256},
                                 {"salt": b"x" * 257}, {"hash_alg": "nope"}])
def test_bad_parameters_are_refused(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"salt": b"s", **bad}
    with pytest.raises(ValueError):
        VerityParams(**args)  # type: ignore[arg-type]
