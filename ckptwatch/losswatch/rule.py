"""The loss-jump rule: pure, so it can be table-tested and reasoned about apart from any file.

Median of the first ``k`` losses after a resume against the median of the last ``k`` before it. Medians,
not means: one spike (a bad batch) must not decide. The jump must pass two tests: a *ratio*
(``after >= jump_ratio * before``: scale-free, so it means the same for a loss of 0.09 and of 9) and a
*noise* test (``after - before > noise_mads * MAD(before window)``, the MAD floored at ``mad_floor`` of
the reference median), so a loss that wanders anyway is not alerted. A non-finite loss after a resume is
an alert by itself. "Restarted from scratch" when the post-resume loss has climbed back most of the way
(``scratch_fraction``) to the run's initial loss: a fresh model starts where the run started.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ckptwatch.losswatch.settings import LossSettings


@dataclass(frozen=True)
class Judgement:
    """The verdict on one resume. ``ratio`` is None when it is undefined (reference median <= 0)."""

    before: float | None
    after: float | None
    ratio: float | None
    mad: float | None
    threshold: float | None  # the difference the noise test demanded
    alert: bool
    scratch: bool
    nonfinite: bool
    judged: bool  # False: too few points on one side to judge


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def mad(xs: Sequence[float]) -> float:
    """Median absolute deviation (unscaled)."""
    m = median(xs)
    return median([abs(x - m) for x in xs])


def judge(before: Sequence[float], after: Sequence[float], initial: Sequence[float],
          settings: LossSettings) -> Judgement:
    """Judge one resume from the loss values just before it, just after it, and at the run's start.

    ``before`` and ``after`` are at most ``settings.window`` long (the caller picks the windows);
    ``initial`` may be empty (the run's first points unknown).
    """
    if any(not math.isfinite(x) for x in after):
        fin_before = [x for x in before if math.isfinite(x)]
        b = median(fin_before) if fin_before else None
        return Judgement(b, math.nan, None, None, None, alert=True, scratch=False, nonfinite=True,
                         judged=True)
    before = [x for x in before if math.isfinite(x)]
    if len(before) < settings.min_points or len(after) < settings.min_points:
        b = median(before) if before else None
        a = median(after) if after else None
        return Judgement(b, a, _ratio(b, a), None, None, alert=False, scratch=False, nonfinite=False,
                         judged=False)
    b, a = median(before), median(after)
    spread = mad(before)
    threshold = settings.noise_mads * max(spread, settings.mad_floor * abs(b), 1e-12)
    ratio = _ratio(b, a)
    jumped = (a - b) > threshold and (ratio is None or ratio >= settings.jump_ratio)
    scratch = False
    init = [x for x in initial if math.isfinite(x)]
    if jumped and init:
        i = median(init)
        # only meaningful when the run had learned something before the resume
        if i > b and (i - b) > threshold:
            scratch = (a - b) >= settings.scratch_fraction * (i - b)
    return Judgement(b, a, ratio, spread, threshold, alert=jumped, scratch=scratch, nonfinite=False,
                     judged=True)


def _ratio(b: float | None, a: float | None) -> float | None:
    if b is None or a is None or b <= 0:
        return None
    return a / b
