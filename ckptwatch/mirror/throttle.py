"""``max_rate``: a bandwidth cap on what a mirror writes to its target, as a token bucket.

Why a token bucket put around the target (``ThrottledTarget``) rather than sleeps in the copy loop: one
bucket is shared by every upload of one mirror, so ``parallel = 4`` copies together stay under the cap
(not four times it), and the copy code stays as fast as it is when no cap is set: without ``max_rate``
the target is not wrapped at all.

The bucket holds at most ``burst`` bytes (one second of ``rate`` by default) and starts full. A write
takes its bytes from it; when the bucket runs dry the balance goes negative and the writer sleeps until
the refill covers its debt, outside the lock, so the next writer reserves behind it and sleeps longer:
the total written over any long stretch is ``rate * seconds + burst`` at most. A long write is cut into
slices of about a tenth of a second of ``rate``, so the target sees a steady stream rather than bursts
of a whole 4 MiB chunk after a long sleep. The clock and the sleep are injected, so the arithmetic is
tested without real time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ckptwatch.mirror.target import Target, Upload
from ckptwatch.mirror.wrap import TargetWrapper, UploadWrapper

BURST_SECONDS = 1.0  # the bucket's size in seconds of rate: a second's worth may go at once
SLICE_SECONDS = 0.1  # a write is cut into slices of this many seconds of rate...
MIN_SLICE = 64 << 10  # ...but never below 64 KiB (syscalls and object-store parts stay large)


class TokenBucket:
    """At most ``rate`` bytes per second on average, ``burst`` bytes at once. Thread-safe.

    ``taken`` (bytes through the bucket) and ``slept`` (seconds of sleep asked for) are kept for tests
    and reports.
    """

    def __init__(self, rate: float, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"a rate must be above 0 bytes/s, not {rate!r}")
        self.rate = float(rate)
        self.burst = float(rate * BURST_SECONDS if burst is None else burst)
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()
        self.taken = 0
        self.slept = 0.0

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes' worth now (the balance may go negative); the seconds to wait before sending."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            self.taken += n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            self.slept += wait
        return wait

    def take(self, n: int) -> None:
        """Block until ``n`` bytes may be sent."""
        wait = self.reserve(n)
        if wait > 0:
            self._sleep(wait)

    @property
    def slice(self) -> int:
        """The largest piece a write is sent in."""
        return max(MIN_SLICE, int(self.rate * SLICE_SECONDS))


class ThrottledUpload(UploadWrapper):
    """An upload whose writes wait for the bucket, slice by slice."""

    def __init__(self, inner: Upload, bucket: TokenBucket) -> None:
        super().__init__(inner)
        self.bucket = bucket

    def write(self, data: bytes | memoryview) -> None:
        step = self.bucket.slice
        with memoryview(data) as outer, outer.cast("B") as view:  # released: the copy reuses its buffer
            for start in range(0, view.nbytes, step):
                with view[start:start + step] as piece:
                    self.bucket.take(piece.nbytes)
                    self.inner.write(piece)


class ThrottledTarget(TargetWrapper):
    """``inner``, with every upload's bytes taken from one shared ``bucket`` (reads are not capped)."""

    def __init__(self, inner: Target, bucket: TokenBucket) -> None:
        super().__init__(inner)
        self.bucket = bucket

    def open_write(self, name: str) -> Upload:
        return ThrottledUpload(self.inner.open_write(name), self.bucket)


def throttled(target: Target, max_rate: int | None, *, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> Target:
    """``target`` capped at ``max_rate`` bytes/s (one bucket for every upload through it); ``target``
    itself when ``max_rate`` is None (no wrapper, no cost)."""
    if max_rate is None:
        return target
    return ThrottledTarget(target, TokenBucket(max_rate, clock=clock, sleep=sleep))
