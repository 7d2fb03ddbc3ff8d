"""The fuzz harness's short budget, and every crash found so far as a regression test (``tests/fuzzing.py``).

A few seconds in all: the seeds are real files the libraries write here; Hypothesis mutates them
(shrinking any failure to a small input), a plain mutation fuzzer runs for two seconds, and each file of
``tests/fuzz_corpus/`` is read again. The long budget is ``python -m bench.fuzz --minutes 10``.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzzing


@cache
def _seeds(root: str) -> fuzzing.Seeds:
    return fuzzing.build_seeds(Path(root) / "seeds")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> fuzzing.Seeds:
    return _seeds(str(tmp_path_factory.mktemp("fuzz")))


def _assert_passes(failure: fuzzing.Failure | None) -> None:
    assert failure is None, f"{failure.target}: {failure.why}"


@st.composite
def _edits(draw: st.DrawFn, data: bytes) -> bytes:
    """Hypothesis's own mutation of a seed: overwrite, insert, cut; each shrinks towards no edit."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(b)))
        op = draw(st.sampled_from(("overwrite", "insert", "cut", "int64")))
        if op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            b[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=16) | st.sampled_from(fuzzing._TOKENS))
        elif op == "cut":
            del b[pos:pos + draw(st.integers(1, 64))]
        else:
            b[pos:pos + 8] = draw(st.sampled_from(fuzzing._INTERESTING)).to_bytes(8, "little")
    return bytes(b)


@pytest.mark.parametrize("target", sorted(fuzzing.TARGETS))
def test_hypothesis_mutations(seeds, tmp_path, target):
    """Hypothesis-driven edits of each target's real seeds never escape the reader or break its bounds."""

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def run(data: st.DataObject) -> None:
        seed = data.draw(st.sampled_from(seeds.by_target[target]))
        mutated = data.draw(_edits(seed))
        _assert_passes(fuzzing.check_one(target, mutated, tmp_path, random.Random(0), seeds))

    run()


def test_plain_mutation_fuzzer(seeds, tmp_path):
    """Two seconds of the plain mutation fuzzer over every target (the long budget is bench/fuzz.py)."""
    failures = fuzzing.fuzz(seeds, tmp_path, seconds=2.0, rng=random.Random(20251204))
    assert not failures, "\n".join(f"{f.target}: {f.why.splitlines()[0]}" for f in failures)


def test_seeds_are_clean(seeds, tmp_path):
    """The unmutated seeds pass (a harness that flags them would flag everything)."""
    for target, files in seeds.by_target.items():
        for data in files:
            _assert_passes(fuzzing.check_one(target, data, tmp_path / target, random.Random(0), seeds))


def _corpus_params() -> list:
    out = []
    for target, path, in_pickle in fuzzing.corpus_files():
        marks = [pytest.mark.xfail(strict=False, reason="owned by the pickle work")] if in_pickle else []
        out.append(pytest.param(target, path, id=f"{'pickle/' if in_pickle else ''}{target}/{path.stem}",
                                marks=marks))
    return out


@pytest.mark.parametrize(("target", "path"), _corpus_params())
def test_corpus(seeds, tmp_path, target, path):
    """Every crash the fuzzers (and the issue's probes) found, read again: a finding, within bounds."""
    for mode in range(3):  # the targets choose cheap or deep reads at random: cover both
        work = tmp_path / str(mode)
        work.mkdir()
        _assert_passes(fuzzing.check_one(target, path.read_bytes(), work, random.Random(mode), seeds))
