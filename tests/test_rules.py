"""Pure rules: settle, durations, status precedence, hazards, and the documented vocabulary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckptwatch.hazards import CheckpointFacts, checkpoint_hazards, run_hazards
from ckptwatch.model import Problem, Status
from ckptwatch.settle import Settle, is_abandoned, parse_duration, settle_state
from ckptwatch.vocabulary import HAZARD_KINDS, PROBLEM_KINDS, status_from

README = Path(__file__).resolve().parent.parent / "README.md"


def test_settle_boundary() -> None:
    """A checkpoint is settling strictly within settle_seconds of its newest write, settled from then on."""
    assert settle_state(100.0, now=159.9, settle_seconds=60) is Settle.SETTLING
    assert settle_state(100.0, now=160.0, settle_seconds=60) is Settle.SETTLED


def test_future_mtime_counts_as_just_written() -> None:
    """Clock skew (an mtime ahead of now) never makes a checkpoint look settled."""
    assert settle_state(1000.0, now=900.0, settle_seconds=60) is Settle.SETTLING


def test_abandoned_only_after_stale_after() -> None:
    """A temp marker is abandoned only once untouched for longer than stale_after."""
    assert not is_abandoned(0.0, now=1800.0, stale_after=1800)
    assert is_abandoned(0.0, now=1800.1, stale_after=1800)


@pytest.mark.parametrize("text,seconds",
                         [("90", 90), ("90s", 90), ("30m", 1800), ("6h", 21600), ("2d", 172800),
                          ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations accept plain seconds and s/m/h/d suffixes."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5m", "5x"])
def test_parse_duration_rejects(text: str) -> None:
    """Bad durations raise ValueError with the offending text."""
    with pytest.raises(ValueError):
        parse_duration(text)


KINDS = list(PROBLEM_KINDS)


@given(st.lists(st.sampled_from(KINDS), max_size=6))
def test_status_precedence(kinds: list[str]) -> None:
    """Transient beats corrupt beats incomplete beats complete; warnings never change the status."""
    problems = [Problem(k, "f", "m") for k in kinds]
    sev = {PROBLEM_KINDS[k].severity.value for k in kinds}
    expected = (Status.IN_PROGRESS if "transient" in sev else Status.CORRUPT if "corrupt" in sev
                else Status.INCOMPLETE if "incomplete" in sev else Status.COMPLETE)
    assert status_from(problems) is expected


def test_readme_documents_every_kind() -> None:
    """The README's vocabulary table is exactly the code's (every kind, its severity and advice)."""
    from ckptwatch.vocabulary import markdown_table

    text = README.read_text()
    assert markdown_table() in text
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    assert set(PROBLEM_KINDS) | set(HAZARD_KINDS) == documented


def test_every_kind_has_advice() -> None:
    """Every kind tells the reader what to do."""
    for k in [*PROBLEM_KINDS.values(), *HAZARD_KINDS.values()]:
        assert k.advice and k.meaning, k.name


def _adapter(config: dict | None = None, *, digest: str = "d1", size: int = 40_000,
             b_zero: bool | None = False, tensors: dict | None = None) -> dict:
    return {"dir": "/r/c", "config": config or {"r": 8, "lora_alpha": 16, "target_modules": ["c_attn"]},
            "weights": "/r/c/adapter_model.safetensors", "size": size, "digest": digest, "b_all_zero": b_zero,
            "tensors": {"x": object()} if tensors is None else tensors}


def test_stub_beside_adapter_is_a_hazard() -> None:
    """A full-weights file beside a PEFT adapter is flagged, naming both files and the byte size."""
    facts = CheckpointFacts("/r/c", 30, {"": _adapter()}, [("/r/c/pytorch_model.bin", 888)])
    (h,) = checkpoint_hazards(facts)
    assert h.kind == "stub_weights_shadow_adapter"
    assert "888 bytes" in h.message and "adapter_model.safetensors" in h.message


def test_empty_and_zero_adapters() -> None:
    """A header-only adapter is empty; an all-zero-B adapter past step 0 was never trained."""
    empty = checkpoint_hazards(CheckpointFacts("/r/c", 10, {"": _adapter(size=600, tensors={})}, []))
    assert [h.kind for h in empty] == ["empty_adapter"]
    zero = checkpoint_hazards(CheckpointFacts("/r/c", 10, {"": _adapter(b_zero=True)}, []))
    assert [h.kind for h in zero] == ["adapter_b_zero"]
    at_start = checkpoint_hazards(CheckpointFacts("/r/c", 0, {"": _adapter(b_zero=True)}, []))
    assert at_start == []


def test_adapter_drift_and_unchanged_across_checkpoints() -> None:
    """Changed lora_alpha between checkpoints is drift; identical tensor bytes: the adapter did not train."""
    a = CheckpointFacts("/r/c10", 10, {"": _adapter(digest="same")}, [])
    b = CheckpointFacts("/r/c20", 20, {"": _adapter({"r": 8, "lora_alpha": 4, "target_modules": ["c_attn"]},
                                                    digest="same")}, [])
    out = run_hazards([a, b])
    kinds = sorted(h.kind for h in out["/r/c20"])
    assert kinds == ["adapter_config_drift", "adapter_unchanged"]
    assert "lora_alpha 16 in c10, 4 in c20" in next(h.message for h in out["/r/c20"]
                                                    if h.kind == "adapter_config_drift")
    assert "/r/c10" not in out


def test_target_module_order_is_not_drift() -> None:
    """target_modules saved in another order is the same config."""
    a = CheckpointFacts("/r/a", 1, {"": _adapter({"r": 8, "lora_alpha": 16, "target_modules": ["q", "v"]},
                                                  digest="1")}, [])
    b = CheckpointFacts("/r/b", 2, {"": _adapter({"r": 8, "lora_alpha": 16, "target_modules": ["v", "q"]},
                                                  digest="2")}, [])
    assert run_hazards([a, b]) == {}
