"""Bounded, page-aligned streaming reads and the fastest CRC-32 available, shared by the format readers.

Why a module of its own: every ``--deep`` check (safetensors full read, torch zip CRC, MindSpore CRC
trailer, legacy torch storages) streams a byte range through a fixed buffer, and all of them must avoid
the same measured traps (perf-baselines §3): a ``bytearray`` of 4 MiB or more lands at page offset 16 and
``readinto`` then runs 6x slower, so the buffer is an anonymous ``mmap`` (page aligned) and reads start at
the same page offset as the file offset. Memory stays bounded by the buffer whatever the file size.

CRC-32 (the zip/IEEE polynomial, not CRC-32C) comes from python-isal when it is installed, else zlib-ng,
else the standard library's zlib. Measured on a warm 1 GiB torch zip (read + CRC, one thread): isal
5.7 GB/s, zlib-ng 5.3 GB/s, zlib 2.0 GB/s, against ``cat`` at 10.6 GB/s; the copy out of the page cache
and the CRC each cost about 0.1 s/GB, so one thread cannot reach ``cat``. Two threads could, on two idle
cores; on this shared 2-vCPU box they were slower, so the default stays at one.
Nothing here imports torch or numpy.
"""

from __future__ import annotations

import functools
import os
import stat
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import Any

from ckptwatch.formats._io import FormatError, display, open_regular, problem_from_oserror
from ckptwatch.formats.limits import KIND as LIMIT_KIND
from ckptwatch.formats.limits import file_budget, unmetered
from ckptwatch.model import FileCheck, Problem

PAGE = os.sysconf("SC_PAGE_SIZE")  # mmap.PAGESIZE, without importing mmap on every start (no stream read)
CHUNK = 4 << 20  # 4 MiB: fastest measured size that stays in cache (perf-baselines §3-4)
PARALLEL_MIN = 64 << 20  # with threads > 1, only this much data or more is split between threads
SEGMENT = 32 << 20  # bytes per thread job


def _pick_crc() -> tuple[str, Callable[..., int], Callable[[int, int, int], int] | None, bool]:
    """(name, crc32(data, value), crc32_combine or None, releases the GIL) of the best importable CRC."""
    try:
        from isal import isal_zlib

        return "isal", isal_zlib.crc32, isal_zlib.crc32_combine, True
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        # zlib-ng's crc32 did not scale with a second thread here (isal's and zlib's release the GIL).
        return "zlib-ng", zlib_ng.crc32, zlib_ng.crc32_combine, False
    except ImportError:
        pass
    return "zlib", zlib.crc32, None, True


# The CRC in use, set by ``_load_crc`` on first use: its name, ``crc32(data, value)``, its
# ``crc32_combine`` or None, and whether it releases the GIL. Not at import: importing isal costs ~1 ms
# of CPU, and most commands (``ckptwatch latest``, every structural check) compute no CRC.
CRC_IMPL: str
crc32: Callable[..., int]
_crc32_combine: Callable[[int, int, int], int] | None
_CRC_RELEASES_GIL: bool


def _load_crc() -> None:
    global CRC_IMPL, crc32, _crc32_combine, _CRC_RELEASES_GIL
    if "crc32" not in globals():
        CRC_IMPL, crc32, _crc32_combine, _CRC_RELEASES_GIL = _pick_crc()


def __getattr__(name: str) -> Any:
    """The four names above, read from outside (``CRC_IMPL``, a test's monkeypatch) before any CRC ran."""
    if name in ("CRC_IMPL", "crc32", "_crc32_combine", "_CRC_RELEASES_GIL"):
        _load_crc()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Told the size of every chunk the streaming reads below deliver (``verify --deep``'s progress bar); None
# (the default, and the service's setting) costs one comparison per 4 MiB chunk.
_on_read: Callable[[int], None] | None = None


def read_progress(callback: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """Set the function told the size of each chunk streamed by the deep reads (None: nobody); returns
    the previous one, to be put back. It may be called from the readers' threads."""
    global _on_read
    previous, _on_read = _on_read, callback
    return previous


def run_check(path: str, body: Callable[[int, str, int, list[Problem], dict[str, Any]], None], *,
              opened: int | None = None) -> FileCheck:
    """Open ``path``, check it is a non-empty regular file, run ``body(fd, shown, size, problems, facts)``.

    ``opened``: an fd of ``path`` the caller already has from ``open_regular`` (``filecheck`` opens each
    file once, to sniff it and to judge it); it stays the caller's to close.

    The one place where a reader's structural fault (``FormatError``, including a read stopped at the
    file's limits) or an OS error (the file vanished, permission denied, EIO) becomes a finding, so no
    reader lets an exception escape for bad input. The file's time and memory budget runs from here.
    ``facts["size"]`` is set before ``body`` runs.
    """
    shown = display(path)
    if opened is not None:
        fd = opened
    else:
        try:
            fd = open_regular(path)
        except OSError as exc:
            return FileCheck(shown, (oserror_problem(path, exc),))
    facts: dict[str, Any] = {}
    problems: list[Problem] = []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError("bad_header", f"{shown} is not a regular file")
        facts["size"] = st.st_size
        if st.st_size == 0:
            raise FormatError("empty_file", f"{shown} is empty (0 bytes)")
        with file_budget(shown):
            body(fd, shown, st.st_size, problems, facts)
    except FormatError as exc:
        problems.append(Problem(exc.kind, shown, exc.message))
    except OSError as exc:
        problems.append(oserror_problem(path, exc))
    except (RecursionError, MemoryError) as exc:  # a reader's stack or the heap: limits too
        what = "nested deeper than the reader can follow" if isinstance(exc, RecursionError) \
            else "needs more memory than the reader could allocate"
        problems.append(Problem(LIMIT_KIND, shown, f"{shown}: its structure is {what}"))
    finally:
        if opened is None:
            os.close(fd)
    return FileCheck(shown, tuple(problems), facts)


def oserror_problem(path: str, exc: OSError, where: str = "") -> Problem:
    """``problem_from_oserror`` with a printable path and, for I/O errors, the byte range being read."""
    p = problem_from_oserror(path, exc)
    shown = display(path)
    where = where or getattr(exc, "ckptwatch_where", "")
    message = p.message.replace(path, shown) if shown != path else p.message
    if where and p.kind == "read_error":
        message = f"{message} while reading {where}"
    return Problem(p.kind, shown, message)


class AlignedBuffer:
    """A page-aligned scratch buffer of ``size`` bytes (plus one page of slack for offset matching)."""

    def __init__(self, size: int = CHUNK) -> None:
        import mmap  # here, not at the top: only streaming reads (--deep, CRCs) make a buffer

        self._map = mmap.mmap(-1, size + PAGE)
        self.view = memoryview(self._map)
        self.size = size

    def close(self) -> None:
        self.view.release()
        try:
            self._map.close()
        except BufferError:  # a caller still holds a slice; the map is freed with it
            pass

    def __enter__(self) -> AlignedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_range(fd: int, start: int, end: int, path: str, buf: AlignedBuffer) -> Iterator[memoryview]:
    """Yield views of bytes ``[start, end)`` of ``fd``, at most ``buf.size`` at a time.

    Each view is only valid until the next one is requested (the buffer is reused). The destination
    starts at the same page offset as the file offset, so the kernel's copy never hits the
    short-distance slowdown. Raises ``FormatError('truncated')`` if the file ends early; ``OSError``
    propagates (the caller knows which file and turns it into a Problem).
    """
    pos = start
    mv = buf.view
    while pos < end:
        skew = pos % PAGE
        n = min(buf.size - skew if skew else buf.size, end - pos)
        with mv[skew : skew + n] as target:
            try:
                got = os.preadv(fd, [target], pos)
            except OSError as exc:
                exc.ckptwatch_where = f"bytes {pos}..{pos + n}"  # type: ignore[attr-defined]
                raise
        if got <= 0:
            raise FormatError(
                "truncated", f"{display(path)} ends at byte {pos}, but bytes up to {end} are needed"
            )
        view = mv[skew : skew + got]
        if _on_read is not None:
            _on_read(got)
        try:
            yield view
        finally:
            view.release()
        pos += got


PIPE_CHUNK = 4 << 20  # measured here: 1-2 MiB lose to the thread hand-off, 8-16 MiB fall out of cache
PIPE_MIN = 8 << 20  # less data in all is not worth a thread hand-off


def _crc_pipelined(fd: int, ranges: list[tuple[int, int]], path: str) -> list[int]:
    """CRC-32 of each range, with the next read in flight while the current chunk is checksummed.

    One thread alternating ``preadv`` and CRC makes each wait for the other. Both release the GIL, so
    a reader thread filling one buffer while this thread checksums the other overlaps them. The two
    buffers and the reader live for the whole call (fresh buffers per record cost page faults). No
    mmap of the file: one truncated under us must give a finding, not SIGBUS.
    """
    from concurrent.futures import ThreadPoolExecutor  # only --deep needs threads; keep start-up light

    _load_crc()

    def pieces() -> Iterator[tuple[int, int, int]]:
        for index, (s, e) in enumerate(ranges):
            pos = s
            while pos < e:
                n = min(PIPE_CHUNK - pos % PAGE, e - pos)
                yield index, pos, n
                pos += n

    def read(piece: tuple[int, int, int], buf: AlignedBuffer) -> int:
        _, pos, n = piece
        skew = pos % PAGE
        with buf.view[skew : skew + n] as target:
            try:
                return os.preadv(fd, [target], pos)
            except OSError as exc:
                exc.ckptwatch_where = f"bytes {pos}..{pos + n}"  # type: ignore[attr-defined]
                raise

    crcs = [0] * len(ranges)
    bufs = (AlignedBuffer(PIPE_CHUNK), AlignedBuffer(PIPE_CHUNK))
    work = pieces()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="ckptwatch-read") as ex:
            piece = next(work, None)
            turn = 0
            pending = ex.submit(read, piece, bufs[turn]) if piece else None
            while pending is not None and piece is not None:
                got = pending.result()
                index, pos, n = piece
                if got != n:
                    raise FormatError("truncated", f"{display(path)} ends at byte {pos + max(got, 0)}, "
                                      f"but bytes up to {ranges[index][1]} are needed")
                current, skew = bufs[turn], pos % PAGE
                piece, turn = next(work, None), turn ^ 1
                pending = ex.submit(read, piece, bufs[turn]) if piece else None
                with current.view[skew : skew + got] as chunk:
                    crcs[index] = crc32(chunk, crcs[index])
                if _on_read is not None:
                    _on_read(got)
    finally:
        for b in bufs:
            b.close()
    return crcs


def read_ahead(readinto: Callable[[memoryview], int], *, on_read: Callable[[memoryview], None] | None = None,
               size: int = PIPE_CHUNK) -> Generator[memoryview, None, None]:
    """Views of everything ``readinto`` gives until it returns 0, the next read in flight while the
    caller uses the current view (``_crc_pipelined``'s pattern, for a stream of unknown length).

    Why: a copy alternating read, hash and write in one thread makes each wait for the others; the
    read (``readv``/``readinto``), xxhash and ``write`` all release the GIL, so a reader thread filling
    one page-aligned buffer while the caller writes the other overlaps them. ``on_read(view)`` runs in
    the reader thread right after each read, in stream order (a hasher's ``update``: the reader then
    reads and hashes, the caller only writes, which balances the two threads of a copy).

    The first read is made in the caller's thread, and the reader thread starts only when a read fills
    the whole buffer, so a small file costs no thread. Each view is valid until the next is requested.
    Memory: two buffers of ``size``. An error of ``readinto`` or ``on_read`` is raised to the caller at
    the view it would have produced; when the caller stops early (an error of its own, ``close()``),
    the read in flight is waited for before its buffer is unmapped.
    """

    def fill(buf: AlignedBuffer) -> int:
        with buf.view[:size] as target:
            n = readinto(target)
        if n and on_read is not None:
            with buf.view[:n] as got:
                on_read(got)
        return n

    bufs = [AlignedBuffer(size)]
    ex = None
    pending = None
    try:
        current = bufs[0]
        n = fill(current)
        while n:
            if ex is None and n == size:  # more may follow: read ahead from now on
                from concurrent.futures import ThreadPoolExecutor  # lazily, like _crc_pipelined

                bufs.append(AlignedBuffer(size))
                ex = ThreadPoolExecutor(1, thread_name_prefix="ckptwatch-readahead")
            nxt = current
            if ex is not None:
                nxt = bufs[1] if current is bufs[0] else bufs[0]
                pending = ex.submit(fill, nxt)
            with current.view[:n] as chunk:
                yield chunk
            if pending is not None:
                n = pending.result()
                pending = None
            else:
                n = fill(nxt)
            current = nxt
    finally:
        if pending is not None:  # the caller stopped early: the reader must be done with its buffer
            try:
                pending.result()
            except Exception:  # noqa: BLE001, S110 - the caller's own error is the one being raised
                pass
        if ex is not None:
            ex.shutdown(wait=True)
        for b in bufs:
            b.close()


def _crc_segment(fd: int, start: int, end: int, path: str) -> int:
    _load_crc()
    crc = 0
    with AlignedBuffer() as buf:
        for chunk in iter_range(fd, start, end, path, buf):
            crc = crc32(chunk, crc)
    return crc


def _segments(ranges: list[tuple[int, int]], seg: int) -> list[tuple[int, int, int]]:
    """(range index, start, end) pieces of at most ``seg`` bytes; an empty range gives one empty piece."""
    jobs = []
    for i, (s, e) in enumerate(ranges):
        jobs.append((i, s, min(e, s + seg)))
        p = s + seg
        while p < e:
            jobs.append((i, p, min(e, p + seg)))
            p += seg
    return jobs


def crc32_ranges(fd: int, ranges: list[tuple[int, int]], path: str, *, threads: int = 1) -> list[int]:
    """CRC-32 of each ``[start, end)`` range of ``fd`` (zip polynomial), streamed in bounded memory.

    ``threads=2`` splits long ranges in 32 MiB segments that two threads read and checksum at once and
    combines them in order; it only pays off with a CRC that releases the GIL (isal, stdlib zlib) and a
    free second core, so the default is one thread.
    """
    _load_crc()
    with unmetered():
        return _crc32_ranges(fd, ranges, path, threads)


def _crc32_ranges(fd: int, ranges: list[tuple[int, int]], path: str, threads: int) -> list[int]:
    total = sum(e - s for s, e in ranges)
    if threads <= 1 or not _CRC_RELEASES_GIL or total < PARALLEL_MIN:
        if _CRC_RELEASES_GIL and total >= PIPE_MIN:
            return _crc_pipelined(fd, ranges, path)
        results = []
        with AlignedBuffer() as buf:
            for s, e in ranges:
                crc = 0
                for chunk in iter_range(fd, s, e, path, buf):
                    crc = crc32(chunk, crc)
                results.append(crc)
        return results
    from concurrent.futures import ThreadPoolExecutor

    jobs = _segments(ranges, SEGMENT)
    crcs = [0] * len(ranges)
    with ThreadPoolExecutor(threads, thread_name_prefix="ckptwatch-crc") as ex:
        for (i, s, e), c in zip(
            jobs, ex.map(lambda j: _crc_segment(fd, j[1], j[2], path), jobs), strict=True
        ):
            crcs[i] = crc32_combine(crcs[i], c, e - s) if s != ranges[i][0] else c
    return crcs


def crc32_concat(fd: int, ranges: list[tuple[int, int]], path: str, *, threads: int = 1) -> int:
    """CRC-32 of the concatenation of the ``ranges`` of ``fd``, in order."""
    crc = 0
    for (s, e), c in zip(ranges, crc32_ranges(fd, ranges, path, threads=threads), strict=True):
        crc = crc32_combine(crc, c, e - s)
    return crc


# zlib's crc32_combine (GF(2) polynomial arithmetic, zlib >= 1.2.12 formulation), for the stdlib fallback.
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


@functools.cache
def _x2n_table() -> list[int]:
    """x^(2^k) mod the polynomial, k < 32: built on first use (only a parallel CRC without a library's
    combine needs it), not at import (~0.3 ms of every start, bench/startup.py)."""
    p, table = 1 << 30, []  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


def _crc32_combine_py(crc1: int, crc2: int, len2: int) -> int:
    p, k, n = 1 << 31, 3, len2  # x^0; multiply by x^(8 * len2)
    x2n = _x2n_table()
    while n:
        if n & 1:
            p = _multmodp(x2n[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc32(A), crc32(B) and len(B)."""
    if len2 == 0:
        return crc1
    _load_crc()
    return (
        _crc32_combine(crc1, crc2, len2)
        if _crc32_combine is not None
        else _crc32_combine_py(crc1, crc2, len2)
    )


def read_all(
    fd: int, start: int, end: int, path: str, consume: Callable[[int, memoryview], None] | None = None
) -> None:
    """Read all bytes of ``[start, end)`` so I/O errors surface; ``consume(offset, view)`` gets each chunk."""
    pos = start
    with unmetered(), AlignedBuffer() as buf:
        for chunk in iter_range(fd, start, end, path, buf):
            if consume is not None:
                consume(pos, chunk)
            pos += len(chunk)
