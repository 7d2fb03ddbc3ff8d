"""Reading files that are still being appended to: from the last offset, complete lines only.

Why a tailer and not "read the file again": a daemon polls a training log every few seconds for days;
re-reading a multi-GB log each time would cost far more than the training's own logging. The tailer keeps,
per file, the offset read so far and the unfinished last line (a writer may be mid-line when we look);
the next read continues from there. A file that got shorter than our offset, whose inode changed
(rotated, or replaced by rename), or whose first bytes changed (rewritten in place) is read again from the
start as a new *generation*: the caller decides whether that is a new writer (a text log) or a rewrite of
the same one (Lightning rewrites ``metrics.csv`` when a new column appears).

Memory is bounded: reads are in chunks of ``chunk_size`` bytes and an unfinished line longer than
``max_line`` is dropped (no loss line is a megabyte long).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from ckptwatch.formats._io import open_regular_file

CHUNK_SIZE = 8 << 20
MAX_LINE = 1 << 20
PREFIX = 64


@dataclass
class _FileState:
    dev: int
    ino: int
    offset: int = 0
    partial: bytes = b""
    skipping: bool = False  # inside an over-long line: drop bytes up to the next newline
    prefix: bytes = b""
    generation: int = 0
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class Chunk:
    """Complete lines read from ``path``. ``reset`` marks the first chunk of a new generation."""

    path: str
    data: bytes
    generation: int
    reset: bool = False


@dataclass(slots=True)
class Tailer:
    """Per-file read positions for any number of files (several runs may share one tailer)."""

    chunk_size: int = CHUNK_SIZE
    max_line: int = MAX_LINE
    _files: dict[str, _FileState] = field(default_factory=dict)

    def generation(self, path: str) -> int:
        st = self._files.get(path)
        return st.generation if st else 0

    def forget(self, path: str) -> None:
        self._files.pop(path, None)

    def read(self, path: str) -> Iterator[Chunk]:
        """Yield the complete lines appended to ``path`` since the last call (nothing if unchanged)."""
        try:
            st = os.stat(path)
        except OSError:
            return
        state = self._files.get(path)
        reset = False
        if state is None:
            state = self._files[path] = _FileState(st.st_dev, st.st_ino)
            reset = True
        elif (st.st_dev, st.st_ino) != (state.dev, state.ino) or st.st_size < state.offset:
            state = self._restart(path, state, st)
            reset = True
        elif st.st_size == state.size and st.st_mtime_ns == state.mtime_ns:
            return  # the cheap path: nothing changed
        try:
            f = open_regular_file(path)  # closed by the `with f:` below; open errors handled here
        except OSError:
            return
        with f:
            if not reset and state.prefix:
                head = f.read(len(state.prefix))
                if head != state.prefix:  # rewritten in place (same inode, not shorter)
                    state = self._restart(path, state, os.fstat(f.fileno()))
                    reset = True
            f.seek(state.offset)
            while True:
                block = f.read(self.chunk_size)
                if not block:
                    break
                if not block.endswith(b"\n"):
                    block += f.readline(self.max_line)  # finish the line here: one copy, not two
                if state.offset < PREFIX:
                    state.prefix = (state.prefix + block)[:PREFIX]
                state.offset += len(block)
                data = self._complete_lines(state, block)
                if data:
                    yield Chunk(path, data, state.generation, reset)
                    reset = False
            state.size, state.mtime_ns = state.offset, st.st_mtime_ns
        if reset:  # a new generation with no complete line yet still announces itself
            yield Chunk(path, b"", state.generation, True)

    def _restart(self, path: str, old: _FileState, st: os.stat_result) -> _FileState:
        state = self._files[path] = _FileState(st.st_dev, st.st_ino, generation=old.generation + 1)
        return state

    def _complete_lines(self, state: _FileState, block: bytes) -> bytes:
        if state.skipping:
            nl = block.find(b"\n")
            if nl < 0:
                return b""
            block = block[nl + 1:]
            state.skipping = False
        data = state.partial + block if state.partial else block
        if data.endswith(b"\n"):
            state.partial = b""
            return data
        cut = data.rfind(b"\n")
        if cut < 0:
            state.partial = data
            out = b""
        else:
            state.partial = data[cut + 1:]
            out = data[:cut + 1]
        if len(state.partial) > self.max_line:
            state.partial = b""
            state.skipping = True
        return out
