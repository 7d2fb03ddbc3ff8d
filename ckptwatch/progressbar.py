"""Byte progress bars on stderr for the long commands (``mirror``, ``restore``, ``verify --deep``).

Why tqdm: a maintained bar that sizes itself to the terminal, scales units and estimates the time left;
no need for one of our own. It is imported only when a bar is drawn (stderr is a terminal and ``--json``
is not given), so ``once`` and ``verify`` start without it, and output piped to a file or a pipe never
holds bar characters. A bar appears only after half a second (``delay``), so a checkpoint that is already
up to date prints no flash, and it is erased when done (``leave=False``): the command's own result line
says what happened.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

DELAY = 0.5  # seconds before a bar is drawn


def wanted(*, json: bool, stream: TextIO | None = None) -> bool:
    """Draw bars? Only on a terminal, and never with ``--json``."""
    stream = sys.stderr if stream is None else stream
    if json:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


class Bar:
    """One bytes bar; ``add`` may be called from any thread and never counts past ``total``."""

    def __init__(self, total: int, desc: str, *, stream: TextIO | None = None) -> None:
        import threading

        from tqdm import tqdm  # only when a bar is drawn: the CLI's start-up does not pay for it

        self.total = max(0, total)
        self.done = 0
        self._lock = threading.Lock()
        self._bar: Any = tqdm(total=self.total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                              file=sys.stderr if stream is None else stream, leave=False, delay=DELAY,
                              dynamic_ncols=True, mininterval=0.2)

    def add(self, n: int) -> None:
        with self._lock:
            step = min(n, self.total - self.done)
            if step > 0:
                self.done += step
                try:
                    self._bar.update(step)
                except OSError:  # the terminal went away (a hang-up): the work goes on without its bar
                    self._bar.disable = True

    def close(self) -> None:
        with self._lock:
            self._bar.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(total: int, desc: str, *, json: bool, stream: TextIO | None = None) -> Bar | None:
    """A bar when ``wanted``, else None (then callers wrap nothing)."""
    return Bar(total, desc, stream=stream) if wanted(json=json, stream=stream) else None
