"""Retention's facts (``retention.facts.candidates_of``) on real training output.

Every run here is written by the real framework at test time (tests/builders): the HF Trainer with
``load_best_model_at_end`` (``hf_best_first``: its recorded best is the oldest checkpoint, so "best" and
"newest" cannot be confused), Lightning with a monitored ``save_top_k`` and ``save_last=True``
(``lightning_top_k``) or ``save_last="link"`` (``lightning``), and DeepSpeed ZeRO-2. Megatron, NeMo and
MindSpore cannot run here; their runs are the synthetic builders of tests/builders/synthetic.py, as the
other layout tests use. The oracle for metrics and the best is what the framework itself recorded
(``trainer_state.json`` read with ``json``; the Lightning callback's own values written by the builder).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ckptwatch import pointer
from ckptwatch.config.retention import RetentionConfig
from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import RunReport
from ckptwatch.retention.facts import (
    CKPTWATCH_LATEST,
    LIGHTNING_LAST,
    MEGATRON_TRACKER,
    NEMO_LAST,
    PIN_MAX_CHARS,
    UNREADABLE_PIN,
    candidates_of,
    metric_in_name,
    pin_text,
)
from ckptwatch.retention.policy import Candidate

pytestmark = pytest.mark.slow
SETTLED = CheckOptions(settle_seconds=0)
BEST_BY = {"eval_loss": RetentionConfig(keep_best=1, metric="eval_loss")}


def _run(root: Path) -> RunReport:
    report = check_root(str(root), SETTLED, time.time())
    assert len(report.runs) == 1, [r.root for r in report.runs]
    return report.runs[0]


def _facts(root: Path, policy: RetentionConfig | None = None, *, watched: Path | None = None,
           run: RunReport | None = None, mirrored=None) -> dict[str, Candidate]:
    """Candidates of the one run under ``root`` by checkpoint name."""
    run = run or _run(root)
    cands = candidates_of(run, policy or RetentionConfig(keep_last=1), root=str(watched or root),
                          mirrored=mirrored)
    assert [c.path for c in cands] == [v.path for v in run.checkpoints]
    return {os.path.basename(c.path): c for c in cands}


def _logged(state_path: Path, key: str) -> dict[int, float]:
    """{step: value} of ``key`` in a trainer_state.json's log_history, read with plain json."""
    history = json.loads(state_path.read_text())["log_history"]
    return {e["step"]: e[key] for e in history if key in e}


# --- HF Trainer: metric, best ---------------------------------------------------------------------

def test_hf_metric_is_what_the_trainer_logged_at_each_checkpoint(artefact) -> None:
    root = artefact("hf_best_first")
    evals = _logged(root / "checkpoint-6" / "trainer_state.json", "eval_loss")
    losses = _logged(root / "checkpoint-6" / "trainer_state.json", "loss")
    assert sorted(evals) == [2, 4, 6] and len(set(evals.values())) == 3

    by_eval = _facts(root, RetentionConfig(keep_best=2, metric="eval_loss"))
    assert {n: c.metric for n, c in by_eval.items()} == {f"checkpoint-{s}": evals[s] for s in (2, 4, 6)}
    # "loss" is the training loss (the Trainer's "loss" entries), not the eval loss
    by_loss = _facts(root, RetentionConfig(keep_best=1, metric="loss"))
    assert {n: c.metric for n, c in by_loss.items()} == {f"checkpoint-{s}": losses[s] for s in (2, 4, 6)}
    assert losses[2] != evals[2]
    # Without keep_best no metric is read; an unknown metric has no value anywhere.
    for policy in (RetentionConfig(keep_last=1, metric="eval_loss"),
                   RetentionConfig(keep_best=1, metric="bleu")):
        assert all(c.metric is None for c in _facts(root, policy).values())


def test_hf_metric_between_evals_is_the_latest_before_the_checkpoint(artefact) -> None:
    """A checkpoint saved between two evaluations carries the last eval before it, never a later one.

    Real output: checkpoint-4's own trainer_state.json, with its step-4 eval entry removed (as when
    ``eval_steps`` is not a multiple of ``save_steps``); the other entries are the Trainer's."""
    root = artefact("hf_best_first")
    state_path = root / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    evals = _logged(state_path, "eval_loss")
    state["log_history"] = [e for e in state["log_history"] if not ("eval_loss" in e and e["step"] == 4)]
    state_path.write_text(json.dumps(state))
    assert _facts(root, BEST_BY["eval_loss"])["checkpoint-4"].metric == evals[2]


def test_hf_best_is_the_trainers_best_model_checkpoint(artefact) -> None:
    root = artefact("hf_best_first")
    state = json.loads((root / "checkpoint-6" / "trainer_state.json").read_text())
    recorded = state["best_model_checkpoint"]
    assert not recorded.startswith(str(root))  # written where the builder trained: another "machine"
    facts = _facts(root, BEST_BY["eval_loss"])
    assert [n for n, c in facts.items() if c.best] == [os.path.basename(recorded)] == ["checkpoint-2"]
    assert facts["checkpoint-2"].metric == state["best_metric"]


def test_hf_best_comes_from_the_newest_trainer_state(artefact) -> None:
    """An older checkpoint's trainer_state.json names an older best; the newest record wins."""
    root = artefact("hf_best_first")
    newest = root / "checkpoint-6" / "trainer_state.json"
    state = json.loads(newest.read_text())
    state["best_model_checkpoint"] = "checkpoint-4"  # relative, as a moved run may hold it
    newest.write_text(json.dumps(state))
    facts = _facts(root, BEST_BY["eval_loss"])
    assert [n for n, c in facts.items() if c.best] == ["checkpoint-4"]


# --- Lightning: metric and best from the callback, last.ckpt ----------------------------------------

def test_lightning_top_k_metric_best_and_last_copy(artefact) -> None:
    root = artefact("lightning_top_k")
    truth = json.loads((root / "callback_truth.json").read_text())
    facts = _facts(root / "checkpoints", RetentionConfig(keep_best=1, metric="val_loss"))
    assert set(facts) == {*truth["best_k_models"], "last.ckpt"}
    # exact scores from the pickled callback state, not the 4-digit rounding of the names
    assert {n: c.metric for n, c in facts.items() if n != "last.ckpt"} == truth["best_k_models"]
    assert [n for n, c in facts.items() if c.best] == [truth["best_model_path"]]
    assert truth["best_model_path"] != max(truth["best_k_models"], key=lambda n: facts[n].step or 0)
    # save_last=True writes a copy: what ckpt_path="last" resumes is last.ckpt itself
    assert {n: c.pointed_by for n, c in facts.items()} == {
        n: (LIGHTNING_LAST,) if n == "last.ckpt" else () for n in facts}


def test_lightning_last_symlink_and_hard_link(artefact) -> None:
    root = artefact("lightning") / "checkpoints"
    assert os.readlink(root / "last.ckpt") == "epoch=0-step=8.ckpt"
    facts = _facts(root)
    assert {n: c.pointed_by for n, c in facts.items()} == {"epoch=0-step=4.ckpt": (),
                                                           "epoch=0-step=8.ckpt": (LIGHTNING_LAST,)}
    (root / "last.ckpt").unlink()
    os.link(root / "epoch=0-step=4.ckpt", root / "last.ckpt")
    facts = _facts(root)
    assert {n: c.pointed_by for n, c in facts.items()} == {"epoch=0-step=4.ckpt": (LIGHTNING_LAST,),
                                                           "epoch=0-step=8.ckpt": (),
                                                           "last.ckpt": (LIGHTNING_LAST,)}


# --- other framework pointers -----------------------------------------------------------------------

def test_deepspeed_latest_names_its_tag(artefact) -> None:
    root = artefact("deepspeed_zero2")
    facts = _facts(root)
    assert (root / "latest").read_text() == "global_step4"
    assert {n: c.pointed_by for n, c in facts.items()} == {"global_step2": (),
                                                           "global_step4": ("DeepSpeed latest",)}
    (root / "latest").write_text("global_step2\n")
    assert _facts(root)["global_step2"].pointed_by == ("DeepSpeed latest",)


def test_megatron_tracker_names_its_iteration(artefact) -> None:
    root = artefact("megatron_legacy")  # synthetic: Megatron-LM needs CUDA
    facts = _facts(root)
    assert {n: c.pointed_by for n, c in facts.items()} == {"iter_0000100": (),
                                                           "iter_0000200": (MEGATRON_TRACKER,)}


def test_nemo_last_and_metric_in_names(artefact) -> None:
    root = artefact("nemo") / "checkpoints"  # synthetic: NeMo 2 needs Megatron core and CUDA
    facts = _facts(root, RetentionConfig(keep_best=1, metric="val_loss"))
    assert {n: c.pointed_by for n, c in facts.items() if c.pointed_by} == {
        "model_name=0--val_loss=1.10-step=199-consumed_samples=1600.0-last": (NEMO_LAST,)}
    assert sorted((c.step, c.metric) for c in facts.values()) == [(99, 1.23), (199, 1.10), (199, 1.10),
                                                                  (299, 0.98)]


def test_ckptwatch_latest_names_its_checkpoint(artefact) -> None:
    root = artefact("hf_best_first")
    pointer.update(str(root), str(root / "checkpoint-4"), 4, "hf-trainer", time.time())
    facts = _facts(root)
    assert {n: c.pointed_by for n, c in facts.items()} == {
        "checkpoint-2": (), "checkpoint-4": (CKPTWATCH_LATEST,), "checkpoint-6": ()}


# --- pins ---------------------------------------------------------------------------------------------

def test_pin_text(artefact) -> None:
    root = artefact("hf_best_first")
    (root / "checkpoint-2" / ".ckptwatch-keep").write_bytes(b"  release candidate \x1b[2J\xff\n\n")
    (root / "checkpoint-4" / ".ckptwatch-keep").write_bytes(b"")
    facts = _facts(root)
    assert facts["checkpoint-2"].pinned == "release candidate \\x1b[2J\ufffd"
    assert facts["checkpoint-4"].pinned == ""
    assert facts["checkpoint-6"].pinned is None


def test_pin_beside_a_checkpoint_file(artefact) -> None:
    root = artefact("lightning") / "checkpoints"
    (root / "epoch=0-step=4.ckpt.ckptwatch-keep").write_text("baseline for the paper\n")
    facts = _facts(root)
    assert facts["epoch=0-step=4.ckpt"].pinned == "baseline for the paper"
    assert facts["epoch=0-step=8.ckpt"].pinned is None


def test_pin_per_rank_set(artefact) -> None:
    root = artefact("mindspore")  # synthetic: MindSpore is not a dependency
    pin = root / "checkpoint" / "rank_2" / "llama2_7b_rank_2-1_10.ckpt.ckptwatch-keep"
    pin.write_text("rank 2 says keep")
    facts = {c.step: c for c in _facts(root).values()}
    assert {s: c.pinned for s, c in facts.items()} == {5: None, 10: "rank 2 says keep", 15: None}


def test_pin_that_is_a_fifo_or_a_link_out_of_the_root_pins_unread(artefact, tmp_path: Path) -> None:
    root = artefact("hf_best_first")
    os.mkfifo(root / "checkpoint-2" / ".ckptwatch-keep")  # opening it for reading would block
    secret = tmp_path / "outside.txt"
    secret.write_text("not for ckptwatch to read")
    os.symlink(secret, root / "checkpoint-4" / ".ckptwatch-keep")
    os.symlink("nowhere", root / "checkpoint-6" / ".ckptwatch-keep")
    facts = _facts(root)
    assert {n: c.pinned for n, c in facts.items()} == dict.fromkeys(facts, UNREADABLE_PIN)


def test_pin_text_is_escaped_and_capped() -> None:
    assert pin_text("  a\tb\u202ec\u2028 ".encode()) == "a\\tb\\u202ec"
    long = pin_text(("x" * 50 + "\x07").encode() * 20)
    assert len(long) == PIN_MAX_CHARS and long.endswith("...")
    assert "\x07" not in long and "\\x07" in long


# --- unsafe paths, mirror -------------------------------------------------------------------------------

def test_symlinked_checkpoint_is_unsafe(artefact) -> None:
    """Judged as a dir, then swapped for a link to a copy inside the root before retention looks."""
    root = artefact("hf_best_first")
    run = _run(root)
    (root / "moved").mkdir()
    os.rename(root / "checkpoint-4", root / "moved" / "checkpoint-4")
    os.symlink("moved/checkpoint-4", root / "checkpoint-4")
    facts = _facts(root, run=run)
    assert {n: c.unsafe_path for n, c in facts.items()} == {"checkpoint-2": False, "checkpoint-4": True,
                                                            "checkpoint-6": False}


def test_checkpoint_whose_real_path_leaves_the_root_is_unsafe(artefact, tmp_path: Path) -> None:
    """The run dir is a link inside the watched root to a dir outside it: no checkpoint path is a link,
    yet every real path is outside the root."""
    outside = artefact("hf_best_first")
    watched = tmp_path / "watched"
    watched.mkdir()
    os.symlink(outside, watched / "run")
    run = _run(watched / "run")
    facts = _facts(watched / "run", watched=watched, run=run)
    assert all(c.path.startswith(str(watched / "run")) for c in facts.values())
    assert {n: c.unsafe_path for n, c in facts.items()} == dict.fromkeys(facts, True)
    assert all(not c.unsafe_path for c in _facts(outside).values())


def test_mirrored(artefact) -> None:
    root = artefact("hf_best_first")
    assert all(c.mirrored is None for c in _facts(root).values())
    facts = _facts(root, mirrored=lambda p: p.endswith("checkpoint-2"))
    assert {n: c.mirrored for n, c in facts.items()} == {"checkpoint-2": True, "checkpoint-4": False,
                                                         "checkpoint-6": False}


# --- names --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "metric", "value"), [
    ("epoch=3-step=400-val_loss=0.31.ckpt", "val_loss", 0.31),
    ("epoch=3-step=400-val_loss=0.31-v1.ckpt", "val_loss", 0.31),
    ("epoch=3-step=400-val_loss=0.31.ckpt", "loss", None),  # "loss" is not the tail of "val_loss"
    ("epoch=3-step=400-val_acc=-1.5e-3.ckpt", "val_acc", -1.5e-3),
    ("model_name=0--val_loss=1.23-step=99-consumed_samples=800.0-last", "val_loss", 1.23),
    ("epoch=3-step=400-val_loss=nan.ckpt", "val_loss", None),
    ("epoch=3-step=400.ckpt", "val_loss", None),
])
def test_metric_in_name(name: str, metric: str, value: float | None) -> None:
    assert metric_in_name(name, metric) == value
