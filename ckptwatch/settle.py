"""Pure rules about time: has a checkpoint settled, and has a temp marker been abandoned.

Why pure: both ``once`` and the service apply them, and tests must be able to say "now is 61 s after
the last write" without sleeping or patching the clock (STYLE.md convention 2).
"""

from __future__ import annotations

import enum


class Settle(enum.StrEnum):
    SETTLING = "settling"  # written to within settle_seconds
    SETTLED = "settled"


def settle_state(newest_mtime: float, now: float, settle_seconds: float) -> Settle:
    """A checkpoint is settled once nothing in it changed for ``settle_seconds``.

    A file mtime in the future (clock skew on a network filesystem) counts as "just written".
    """
    return Settle.SETTLING if now - newest_mtime < settle_seconds else Settle.SETTLED


def is_abandoned(marker_mtime: float, now: float, stale_after: float) -> bool:
    """A temp/staging marker untouched for ``stale_after`` belongs to a save that was killed."""
    return now - marker_mtime > stale_after


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"30m"``, ``"6h"``, ``"2d"`` -> seconds. Raises ValueError with the reason."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    if not t:
        raise ValueError("empty duration")
    factor = 1
    if t[-1] in units:
        factor, t = units[t[-1]], t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (use e.g. 90, 90s, 30m, 6h, 2d)") from None
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value * factor
