"""Kept verdicts held packed (issue 13, memory): exact round trips, shared parts, and a small cache.

The judgement cache keeps a packed record of every settled checkpoint (``ckptwatch.packed``); a rescan
decodes it instead of judging again. These tests check, on checkpoints written by the real frameworks,
that decoding gives back exactly what was packed (types included), that what cannot be packed exactly
is kept as objects, and that the cache of a run costs a small, bounded amount per checkpoint.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
import tracemalloc

import pytest

from ckptwatch import engine, packed
from ckptwatch.engine import Cached, check_root, hazard_facts
from ckptwatch.layouts.base import CheckOptions, Judgement
from ckptwatch.model import Problem, Status
from ckptwatch.packed import MARK, Unpackable, decode, encode

pytestmark = pytest.mark.slow


def _shape(x: object) -> object:
    """``x`` with every scalar's type next to it: ``==`` alone takes True for 1 and 1.0 for 1."""
    if isinstance(x, dict):
        return [(_shape(k), _shape(v)) for k, v in x.items()]
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_shape(v) for v in x])
    return (type(x).__name__, repr(x))


@pytest.mark.parametrize("name", ["hf_full", "hf_lora", "hf_multi_adapter", "dcp", "deepspeed_zero2",
                                  "lightning"])
def test_real_verdicts_and_judgements_round_trip_exactly(artefact, name: str, monkeypatch) -> None:
    monkeypatch.setattr(engine, "PACK_ABOVE", 0)  # pack whatever the cache's size
    run = artefact(name)
    cache: dict = {}
    report = check_root(str(run), CheckOptions(settle_seconds=0), time.time() + 60, cache=cache)
    verdicts = [v for r in report.runs for v in r.checkpoints]
    assert verdicts and cache
    for v in verdicts:
        assert decode(encode(v, v.path), v.path) == v
    for path, entry in cache.items():
        j = entry.judgement()
        back = decode(encode(j, path), path)
        assert type(back) is Judgement and _shape(vars(back)) == _shape(vars(j))
        assert entry.key is not None, f"{path}: a settled checkpoint keeps its verdict"
        kept, _ = entry.kept(entry.key, j)
        v = next(v for v in verdicts if v.path == path)
        fields = ("path", "step", "status", "ranks", "problems", "newest_mtime", "bytes")
        assert [getattr(kept, f) for f in fields] == [getattr(v, f) for f in fields]
        assert [type(getattr(kept, f)) for f in fields] == [type(getattr(v, f)) for f in fields]
        assert type(entry._kept) is tuple, f"{path}: kept packed, not as objects"


def test_types_survive_where_python_calls_values_equal() -> None:
    value = {1: True, "one": 1, "float": 1.0, "neg_zero": -0.0, "half": 0.5, "none": None,
             "list": [1, 1.0, True, False, 0, 0.0], "tuple": (Status.COMPLETE, "complete"),
             "nested": {"x": [{"y": (2, 2.0)}]}}
    back = decode(encode(value, "/r/checkpoint-1"), "/r/checkpoint-1")
    assert _shape(back) == _shape(value)
    assert type(back["tuple"][0]) is Status and type(back["tuple"][1]) is str


def test_the_path_is_taken_out_and_put_back_including_its_longer_neighbours() -> None:
    path = "/runs/a/checkpoint-1"
    p = Problem("needs_weights_only_false", f"{path}/rng_state.pth",
                f"{path}/rng_state.pth needs weights_only=False; compare /runs/a/checkpoint-10/rng_state.pth")
    enc = encode(p, path)
    assert path not in repr(enc)
    assert decode(enc, path) == p
    other = "/runs/a/checkpoint-2"
    assert decode(encode(Problem(p.kind, f"{other}/rng_state.pth", p.message.replace(path, other)), other),
                  path) == p  # the same finding of two checkpoints is one packed value


def test_what_cannot_be_packed_exactly_is_refused() -> None:
    with pytest.raises(Unpackable):
        encode({"name": "a" + MARK + "b"}, "/r")
    with pytest.raises(Unpackable):
        encode({"ids": {1, 2}}, "/r")
    odd = Judgement([], facts={"ids": {1, 2}})
    odd.extra = 1  # a field of its own: not rebuilt by Judgement(...)
    with pytest.raises(Unpackable):
        encode(odd, "/r")


def test_an_entry_that_cannot_be_packed_is_kept_as_objects(artefact) -> None:
    run = artefact("hf_full")
    cache: dict = {}
    report = check_root(str(run), CheckOptions(settle_seconds=0), time.time() + 60, cache=cache)
    v = report.runs[0].checkpoints[0]
    entry = cache[v.path]
    odd = Judgement(list(entry.judgement().problems), facts={"ids": {1, 2}})
    kept = Cached(entry.fingerprint, odd, entry.quick, v.path)
    facts = hazard_facts(v.path, v.step, odd)
    kept.keep(1, v, facts)
    assert kept.judgement() is odd and kept.kept(2, odd) is None
    assert kept.kept(1, odd) == (v, facts)
    kept.forget_kept()
    assert kept.kept(1, odd) is None and kept.judgement() is odd


def test_a_cached_run_costs_a_small_record_per_checkpoint(artefact, monkeypatch) -> None:
    """200 real Trainer checkpoints (copies of one, each with its two needs_weights_only_false findings):
    the cache of their judgements and kept verdicts, measured by tracemalloc, stays under 800 bytes a
    checkpoint (~570 measured; as objects it was ~4,500). The sharing table is emptied first, so its part
    is counted."""
    run = artefact("hf_full")
    first = sorted(p for p in run.iterdir() if p.name.startswith("checkpoint-"))[0]
    for i in range(1000, 1200):
        copy = run / f"checkpoint-{i}"
        shutil.copytree(first, copy, symlinks=True)
        state = json.loads((copy / "trainer_state.json").read_text())
        (copy / "trainer_state.json").write_text(json.dumps({**state, "global_step": i}))
    monkeypatch.setattr(engine, "PACK_ABOVE", 100)  # 200 checkpoints: packed
    opts = CheckOptions(settle_seconds=0)
    check_root(str(run), opts, time.time() + 60, cache={})  # every module and reader's one-time tables
    # loaded in this process (without a cache, 200 checkpoints are judged in forked workers)
    packed._shared.clear()
    gc.collect()
    tracemalloc.start()
    try:
        cache: dict = {}
        before = tracemalloc.get_traced_memory()[0]
        report = check_root(str(run), opts, time.time() + 60, cache=cache)
        count = sum(len(r.checkpoints) for r in report.runs)
        assert count >= 200 and all(e.key is not None for e in cache.values())
        kinds = {p.kind for v in report.runs[0].checkpoints for p in v.problems}
        assert "needs_weights_only_false" in kinds
        del report
        gc.collect()
        per_checkpoint = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert per_checkpoint < 800, f"{per_checkpoint:.0f} bytes per cached checkpoint"


def test_a_small_cache_keeps_its_verdicts_as_objects_and_a_big_one_packs_them(artefact, monkeypatch) -> None:
    """Below ``PACK_ABOVE`` checkpoints a rescan reuses the kept verdicts as they are (no decoding, the
    warm rescan's speed); above, they are packed. Both give the verdicts of a pass without a cache."""
    run = artefact("hf_full")
    opts = CheckOptions(settle_seconds=0)
    now = time.time() + 60
    fresh = check_root(str(run), opts, now)
    for limit, kind in ((1000, list), (0, tuple)):
        monkeypatch.setattr(engine, "PACK_ABOVE", limit)
        cache: dict = {}
        check_root(str(run), opts, now, cache=cache)
        assert {type(e._kept) for e in cache.values()} == {kind}
        assert check_root(str(run), opts, now + 1, cache=cache).runs == fresh.runs


def test_a_pass_over_more_than_pack_above_packs_from_its_first_checkpoint(artefact, monkeypatch) -> None:
    """The whole-root pass knows how many checkpoints it will keep before judging the first: a catch-up of
    a big root packs every one (not the first 20,000 as objects, which would stay in the heap). A cache
    that grew past the limit through per-run passes is packed at the next whole-root pass."""
    run = artefact("hf_full")
    opts = CheckOptions(settle_seconds=0)
    now = time.time() + 60
    monkeypatch.setattr(engine, "PACK_ABOVE", 2)  # the run has 3 checkpoints
    cache: dict = {}
    check_root(str(run), opts, now, cache=cache)
    assert len(cache) == 3 and {type(e._kept) for e in cache.values()} == {tuple}
    monkeypatch.setattr(engine, "PACK_ABOVE", 1000)
    small: dict = {}
    check_root(str(run), opts, now, cache=small)
    assert {type(e._kept) for e in small.values()} == {list}
    monkeypatch.setattr(engine, "PACK_ABOVE", 2)
    again = check_root(str(run), opts, now + 1, cache=small)
    assert {type(e._kept) for e in small.values()} == {tuple}
    assert again.runs == check_root(str(run), opts, now + 1).runs
