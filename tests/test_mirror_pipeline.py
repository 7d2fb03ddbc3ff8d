"""The read-ahead copy (``_stream.read_ahead``, used by ``copy.copy_file``, ``hash_source``, ``hash_copy``
and restore): the next chunk is read (and hashed) in a reader thread while the current one is written.

What can go wrong with it, each shown on real files: a chunk lost, repeated or reordered at a buffer
boundary (the copy's bytes or hash would differ from the source's); a failed write that leaves a
committed or temp file behind, or a reader thread still reading a file descriptor after it was
closed; a read error that is swallowed; a refused restore of several files at once that leaves
something at DEST. The chunk size is shrunk to one page so that small files cross many boundaries.
Also the other overlaps of the mirror: a local copy's writeback started while it is written, and an S3
file's parts sent several at once (never more than ``PART_CONCURRENCY``; a part failing in flight
fails the upload and leaves neither an object nor a multipart upload).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ckptwatch.formats._stream import PAGE, read_ahead
from ckptwatch.mirror import copy as mcopy
from ckptwatch.mirror import restore as mrestore
from ckptwatch.mirror.copy import MirrorFailed, _Source, copy_file, hash_copy, hash_source
from ckptwatch.mirror.hashing import ALGORITHM, digest_of
from ckptwatch.mirror.restore import RestoreRefused, restore
from ckptwatch.mirror.target import LocalTarget
from tests.helpers import run_cli

CHUNK = PAGE  # the test chunk: sizes below cross its boundaries
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK - 1, 2 * CHUNK, 2 * CHUNK + 1, 7 * CHUNK + 123]


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    monkeypatch.setattr(mcopy, "CHUNK", CHUNK)
    monkeypatch.setattr(mrestore, "CHUNK", CHUNK)


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ckptwatch-readahead")]


def _wait_no_readers() -> None:
    deadline = time.monotonic() + 5
    while _readers():
        assert time.monotonic() < deadline, f"reader threads still alive: {_readers()}"
        time.sleep(0.01)


@pytest.mark.parametrize("size", SIZES)
def test_copy_bytes_and_hash_equal_the_source_around_chunk_boundaries(tmp_path, size):
    """copy_file, hash_source and hash_copy agree with the source's bytes and a one-shot hash of them,
    for sizes just below, at and above one and two chunks."""
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    target = LocalTarget(str(tmp_path / "to"))
    entry = copy_file(_Source("src.bin", str(src)), target, "c/src.bin", ALGORITHM)
    assert (tmp_path / "to" / "c" / "src.bin").read_bytes() == data
    assert (entry.size, entry.hash) == (size, digest_of(data))
    assert hash_source(str(src), ALGORITHM) == (digest_of(data), size)
    assert hash_copy(target, "c/src.bin", ALGORITHM) == (digest_of(data), size)
    _wait_no_readers()


def test_read_ahead_yields_every_short_read_in_order():
    """A reader giving short reads (a socket, an object store's stream) still yields every byte once,
    in order, and on_read sees exactly the yielded chunks."""
    data = os.urandom(10 * CHUNK + 17)
    pos = 0
    steps = iter([CHUNK, 100, CHUNK, CHUNK, 1, *[CHUNK] * 20])

    def readinto(view: memoryview) -> int:
        nonlocal pos
        n = min(next(steps), len(view), len(data) - pos)
        view[:n] = data[pos:pos + n]
        pos += n
        return n

    seen: list[bytes] = []
    got = [bytes(c) for c in read_ahead(readinto, on_read=lambda v: seen.append(bytes(v)), size=CHUNK)]
    assert b"".join(got) == data and got == seen
    _wait_no_readers()


class _FailingTarget(LocalTarget):
    """A LocalTarget whose uploads fail at their ``fail_at``-th write (a disk fault, a cancellation)."""

    def __init__(self, root: str, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at = fail_at

    def open_write(self, name: str):
        inner = super().open_write(name)
        calls = [0]
        target = self

        class Wrapped:
            def write(self, data):
                calls[0] += 1
                if calls[0] == target.fail_at:
                    raise OSError(28, "No space left on device")
                inner.write(data)

            def commit(self, mtime_ns=None):
                inner.commit(mtime_ns)

            def abort(self):
                inner.abort()

        return Wrapped()


def test_write_failing_mid_file_commits_nothing_and_stops_the_reader(tmp_path):
    """The third chunk's write fails: MirrorFailed names the file, no file and no temp file is left,
    the reader thread has stopped, and the source's descriptor is closed (no fd leaked)."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(9 * CHUNK))
    to = tmp_path / "to"
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(MirrorFailed) as caught:
        copy_file(_Source("src.bin", str(src)), _FailingTarget(str(to), 3), "c/src.bin", ALGORITHM)
    assert "No space left on device" in str(caught.value) and "src.bin" in str(caught.value)
    assert [p for p in to.rglob("*") if p.is_file()] == []
    _wait_no_readers()
    assert len(os.listdir("/proc/self/fd")) == fds


def test_read_error_reaches_the_caller_and_stopping_early_waits_for_the_reader():
    """A read failing on the third call raises at the caller; a caller that stops early returns only
    after the read in flight is finished (its buffer is never unmapped under it)."""
    calls = [0]

    def failing(view: memoryview) -> int:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(5, "Input/output error")
        view[:] = b"x" * len(view)
        return len(view)

    with pytest.raises(OSError, match="Input/output error"):
        for _ in read_ahead(failing, size=CHUNK):
            pass
    _wait_no_readers()

    done: list[float] = []

    def slow(view: memoryview) -> int:
        time.sleep(0.2)
        view[:] = b"y" * len(view)
        done.append(time.monotonic())
        return len(view)

    gen = read_ahead(slow, size=CHUNK)
    next(gen)  # the first chunk; the second read is now in flight in the reader thread
    gen.close()
    closed = time.monotonic()
    assert len(done) == 2 and done[-1] <= closed
    assert not _readers()


@pytest.fixture
def dcp_copy(artefact, tmp_path) -> tuple[Path, Path]:
    """A real 4-rank DCP run mirrored; (the run, the committed copy of its newest checkpoint)."""
    run = artefact("dcp")
    to = tmp_path / "backup"
    r = run_cli("mirror", str(run), "--to", str(to), "--settle", "0")
    assert r.returncode == 0, r.stderr
    return run, to / run.name / "step_300"


@pytest.mark.slow
def test_restore_of_many_chunks_is_byte_identical(dcp_copy, tmp_path):
    """Restored with one-page chunks, two files at once: every file equals the source's."""
    run, copy = dcp_copy
    dest = tmp_path / "restored"
    manifest = restore(LocalTarget(str(copy)), "", str(dest))
    assert len(manifest.files) > 2
    assert any(e.size > 2 * CHUNK for e in manifest.files)
    for e in manifest.files:
        assert (dest / e.path).read_bytes() == (run / "step_300" / e.path).read_bytes()
    _wait_no_readers()


@pytest.mark.slow
def test_restore_refusing_one_file_of_several_leaves_nothing(dcp_copy, tmp_path):
    """One data file of the copy has a byte flipped past its first chunk: restore refuses naming it,
    and neither DEST nor a staging dir is left, though other files were being restored at once."""
    _, copy = dcp_copy
    victim = max((p for p in copy.iterdir() if p.name.endswith(".distcp")), key=lambda p: p.stat().st_size)
    assert victim.stat().st_size > 2 * CHUNK
    raw = bytearray(victim.read_bytes())
    raw[CHUNK + 5] ^= 0xFF
    victim.write_bytes(bytes(raw))
    dest = tmp_path / "out" / "restored"
    with pytest.raises(RestoreRefused) as caught:
        restore(LocalTarget(str(copy)), "", str(dest))
    [finding] = caught.value.findings
    assert finding.kind == "hash" and victim.name in finding.file
    assert os.listdir(tmp_path / "out") == []  # neither DEST nor the staging dir
    _wait_no_readers()


def test_local_copy_starts_writeback_while_it_writes(tmp_path, monkeypatch):
    """A local copy's file has its writeback started every WRITEBACK_EVERY bytes, over consecutive
    ranges of what was written (so commit's fsync has only the tail left); the bytes are unchanged."""
    from ckptwatch.mirror import target as mtarget

    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    monkeypatch.setattr(mtarget, "WRITEBACK_EVERY", 3 * CHUNK)
    data = os.urandom(10 * CHUNK + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    entry = copy_file(_Source("src.bin", str(src)), LocalTarget(str(tmp_path / "to")), "src.bin", ALGORITHM)
    assert (tmp_path / "to" / "src.bin").read_bytes() == data and entry.hash == digest_of(data)
    assert calls == [(0, 3 * CHUNK, os.POSIX_FADV_DONTNEED), (3 * CHUNK, 3 * CHUNK, os.POSIX_FADV_DONTNEED),
                     (6 * CHUNK, 3 * CHUNK, os.POSIX_FADV_DONTNEED)]


def _instrumented(t, fail_part: int | None = None) -> dict[str, int]:
    """Wrap ``t``'s S3 calls: count upload_parts in flight at once (each held 0.2 s), fail one part."""
    import asyncio

    fs = t._fs
    real = fs._call_s3
    seen = {"now": 0, "most": 0, "parts": 0}

    async def call(method, *args, **kwargs):
        if method != "upload_part":
            return await real(method, *args, **kwargs)
        seen["now"] += 1
        seen["parts"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        try:
            await asyncio.sleep(0.2)
            if kwargs["PartNumber"] == fail_part:
                raise PermissionError(13, "Access Denied")
            return await real(method, *args, **kwargs)
        finally:
            seen["now"] -= 1

    fs._call_s3 = call
    return seen


def test_s3_parts_go_up_several_at_once_but_never_more_than_the_limit(s3, monkeypatch):
    """A 6-part file: parts overlap (2 in flight), never more than PART_CONCURRENCY, and the object is
    whole and in order."""
    from ckptwatch.mirror import fsspec_target

    monkeypatch.setattr(fsspec_target, "BLOCK_SIZE", 5 << 20)
    t = fsspec_target.FsspecTarget(s3.url("pre"))
    seen = _instrumented(t)
    data = os.urandom(28 << 20)
    up = t.open_write("big.bin")
    for i in range(0, len(data), 4 << 20):
        up.write(data[i:i + (4 << 20)])
    up.commit()
    assert seen["parts"] == 6 and seen["most"] == fsspec_target.PART_CONCURRENCY > 1
    with t.open_read("big.bin") as f:
        assert f.read() == data


def test_s3_part_failing_in_flight_fails_the_upload_and_leaves_nothing(s3, monkeypatch):
    """Part 2 is refused while part 3 is in flight: the error reaches write or commit naming the object,
    the other parts are waited for, the multipart upload is aborted, and no object exists."""
    from ckptwatch.mirror import fsspec_target

    monkeypatch.setattr(fsspec_target, "BLOCK_SIZE", 5 << 20)
    t = fsspec_target.FsspecTarget(s3.url("pre"))
    seen = _instrumented(t, fail_part=2)
    up = t.open_write("a/big.bin")
    with pytest.raises(PermissionError) as caught:
        for _ in range(6):
            up.write(os.urandom(4 << 20))
        up.commit()
    assert caught.value.filename == s3.url("pre", "a/big.bin")
    assert seen["now"] == 0  # nothing left in flight
    assert s3.multipart_uploads() == [] and s3.keys() == {}
