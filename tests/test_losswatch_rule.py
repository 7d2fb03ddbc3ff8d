"""The loss-jump rule (pure): tables and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckptwatch.losswatch.rule import judge, mad, median
from ckptwatch.losswatch.settings import LossSettings

S = LossSettings()

# before, after, initial, alert, scratch, nonfinite, judged
TABLE = [
    # seed report 4: 0.088 -> 0.34, the run started near 0.5: a jump, not back at the start
    ([0.088, 0.087, 0.089, 0.088, 0.090], [0.34, 0.33, 0.35, 0.34, 0.36], [0.5] * 5, True, False, False,
     True),
    # the same jump when the run started at 0.36: back near the initial loss = restarted from scratch
    ([0.088, 0.087, 0.089, 0.088, 0.090], [0.34, 0.33, 0.35, 0.34, 0.36], [0.36] * 5, True, True, False,
     True),
    # a correct resume: the loss continues
    ([0.35, 0.34, 0.36, 0.35, 0.34], [0.32, 0.33, 0.31, 0.34, 0.32], [1.9] * 5, False, False, False, True),
    # a bump below the ratio (1.3x): no alert
    ([1.0, 1.0, 1.01, 0.99, 1.0], [1.3, 1.31, 1.29, 1.3, 1.3], [3.0] * 5, False, False, False, True),
    # 2x, but the loss wanders by more than that anyway (MAD 0.5): noise, no alert
    ([0.2, 1.5, 0.5, 1.0, 0.1], [1.0, 1.1, 2.0, 0.9, 1.2], [], False, False, False, True),
    # a flat (rounded) reference, MAD 0: the floor keeps a 1.6x jump an alert, and a 0.4% wiggle is no alert
    ([0.25] * 5, [0.40] * 5, [], True, False, False, True),
    ([0.25] * 5, [0.251] * 5, [], False, False, False, True),
    # NaN after the resume: an alert even with one point
    ([0.3] * 5, [math.nan], [], True, False, True, True),
    ([0.3] * 5, [0.31, math.inf], [], True, False, True, True),
    # too few points on one side: reported, not judged
    ([0.3, 0.3], [3.0] * 5, [], False, False, False, False),
    ([0.3] * 5, [3.0, 3.0], [], False, False, False, False),
    # a negative loss (ratio undefined): the noise test alone decides
    ([-2.0, -2.1, -1.9, -2.0, -2.0], [-0.5] * 5, [], True, False, False, True),
]


@pytest.mark.parametrize("before,after,initial,alert,scratch,nonfinite,judged", TABLE)
def test_judge_table(before, after, initial, alert, scratch, nonfinite, judged):
    """Each row pins one verdict of the rule: alert, scratch, non-finite and judged flags."""
    j = judge(before, after, initial, S)
    assert (j.alert, j.scratch, j.nonfinite, j.judged) == (alert, scratch, nonfinite, judged)


def test_judge_numbers_for_seed_report_4():
    """before/after are the window medians and ratio their quotient (0.088 -> 0.34 is 3.9x)."""
    j = judge([0.088, 0.087, 0.089, 0.088, 0.090], [0.34, 0.33, 0.35, 0.34, 0.36], [], S)
    assert j.before == pytest.approx(0.088) and j.after == pytest.approx(0.34)
    assert j.ratio == pytest.approx(0.34 / 0.088)


def test_median_ignores_one_spike():
    """One spike in the post-resume window does not make a jump (median, not mean)."""
    assert not judge([0.3] * 5, [0.3, 0.31, 9.0, 0.29, 0.3], [], S).alert


def test_mad():
    """MAD is the median of absolute deviations from the median (unscaled)."""
    assert mad([1, 2, 3, 4, 100]) == 1.0 and median([3, 1, 2]) == 2.0


finite = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
window = st.lists(finite, min_size=3, max_size=8)


@given(window)
def test_property_same_window_never_alerts(xs):
    """The loss continuing exactly as before is never a jump."""
    assert not judge(xs, xs, [], S).alert


@given(window, window, st.floats(min_value=1.0, max_value=100.0))
def test_property_scaling_invariant(before, after, c):
    """Scaling every loss by the same factor does not change the verdict (ratio and MAD both scale)."""
    a = judge(before, after, [], S)
    b = judge([x * c for x in before], [x * c for x in after], [], S)
    if a.threshold is not None and abs((a.after - a.before) - a.threshold) < 1e-6 * max(1.0, a.threshold):
        return  # on the decision boundary floating point may go either way
    if a.ratio is not None and abs(a.ratio - S.jump_ratio) < 1e-9:
        return
    assert a.alert == b.alert


@given(window, window, st.floats(min_value=0.0, max_value=10.0))
def test_property_monotone_in_after(before, after, d):
    """Raising every post-resume loss never turns an alert into no alert."""
    if judge(before, after, [], S).alert:
        assert judge(before, [x + d for x in after], [], S).alert
