"""Bounded history and incremental reading: memory does not grow with the run, pieces equal the whole."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptwatch.losswatch.points import Decimated, LazyPoints, LossPoint, Segment, WriterId
from ckptwatch.losswatch.settings import LossSettings
from ckptwatch.losswatch.watcher import RunLossWatcher


def test_decimated_is_bounded_and_spans_the_run():
    """A million points leave at most `cap` plot points, spread from the first step to near the last."""
    d = Decimated(cap=500)
    for s in range(1_000_000):
        d.add(LossPoint(s, 1.0))
    assert len(d.points) <= 500 and d.points[0].step == 0 and d.points[-1].step > 990_000


def test_decimated_extend_equals_add():
    """Bulk extend (slices) keeps exactly the points one-by-one add keeps."""
    a, b = Decimated(cap=64), Decimated(cap=64)
    pts = [LossPoint(s, float(s)) for s in range(10_000)]
    for p in pts:
        a.add(p)
    for i in range(0, len(pts), 777):
        b.extend(LazyPoints([p.step for p in pts[i:i + 777]], [p.value for p in pts[i:i + 777]]))
    assert a.points == b.points and a.stride == b.stride


def test_segment_memory_is_bounded_and_before_still_answers():
    """A segment of 200,000 points holds the first window, a 4096-point ring and <= 1000 plot points;
    the reference window just below an old step still comes back (from the decimated history)."""
    seg = Segment(WriterId("text", "x"), keep_first=5)
    seg.extend(LazyPoints(list(range(200_000)), [1.0] * 200_000))
    assert len(seg.first) == 5 and len(seg.recent) == 4096 and len(seg.plot.points) <= 1000
    assert [p.step for p in seg.before(199_990, 3)] == [199_987, 199_988, 199_989]  # exact, from the ring
    old = seg.before(1000, 3)
    assert len(old) == 3 and all(p.step < 1000 for p in old)


def _log(steps_values):
    return "".join(f"{{'loss': '{v:.4g}', 'epoch': '1', 'step': {s}}}\nnoise {s}\n" for s, v in steps_values)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=12))
def test_property_tailing_in_pieces_equals_reading_once(tmp_path_factory, cuts):
    """Writing a log (with a resume) in arbitrary byte pieces and polling after each gives the same
    segments and the same resume as reading the finished file once."""
    text = _log([(s, 0.1) for s in range(1, 31)] + [(s, 0.9) for s in range(21, 40)]).encode()
    base = tmp_path_factory.mktemp("pieces")
    once, pieces = base / "once", base / "pieces"
    once.mkdir()
    pieces.mkdir()
    (once / "train.log").write_bytes(text)
    s = LossSettings()
    ref = RunLossWatcher(str(once), s)
    ref.poll(final=True)
    w = RunLossWatcher(str(pieces), s)
    pos = 0
    got = []
    for c in sorted(set(cuts)):
        with open(pieces / "train.log", "ab") as f:
            f.write(text[pos:c])
        pos = max(pos, c)
        got += w.poll()
    with open(pieces / "train.log", "ab") as f:
        f.write(text[pos:])
    got += w.poll(final=True)

    def strip(segs: list) -> list[tuple]:
        return [(x.first_step, x.last_step, x.points) for x in segs]

    assert strip(w.report().segments) == strip(ref.report().segments)
    assert [(r.at_step, r.before, r.after, r.alert) for r in got] == \
        [(r.at_step, r.before, r.after, r.alert) for r in ref.resumes]


def test_segments_per_family_are_capped(tmp_path: Path):
    """A log resumed 200 times keeps at most MAX_SEGMENTS segments (the first among them) and still
    decides every resume."""
    from ckptwatch.losswatch.watcher import MAX_SEGMENTS

    run = tmp_path / "run"
    run.mkdir()
    text = "".join(_log([(s, 0.3) for s in range(r * 10 + 1, r * 10 + 21)]) for r in range(200))
    (run / "train.log").write_text(text)
    w = RunLossWatcher(str(run), LossSettings())
    w.poll(final=True)
    fam = w.families["text"]
    assert len(fam.segments) <= MAX_SEGMENTS and fam.segments[0].first_point.step == 1
    assert len(w.resumes) == 199 and not any(r.alert for r in w.resumes)
