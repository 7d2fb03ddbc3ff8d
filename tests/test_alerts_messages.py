"""Alert wording and the pure condition rules (stalled, disk low): no network, no clock, no host."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckptwatch.alerts import messages as m
from ckptwatch.alerts.conditions import DiskUsage, disk_low, disk_usage, stalled, stalled_threshold
from ckptwatch.model import Hazard, Problem, Ranks, Status, Verdict

NOW = 1_795_000_000.0  # 2026-11-18T...Z; any fixed instant
RUN = "/data/runs/run-a"
CKPT = f"{RUN}/checkpoint-5000"
SHARD = f"{CKPT}/model-00004-of-00004.safetensors"


def incomplete_verdict() -> Verdict:
    return Verdict(CKPT, 5000, "hf-trainer", Status.INCOMPLETE, Ranks(4, (0, 1, 2), "metadata"),
                   problems=(Problem("missing_rank", SHARD, f"{SHARD} is missing (rank 3's shard)"),))


def alerts_for(v: Verdict, resume_from: str | None = f"{RUN}/checkpoint-4500", step: int | None = 4500):
    return m.checkpoint_alerts(v, run_root=RUN, host="gpu-node-7", now=NOW, resume_from=resume_from,
                               resume_step=step)


def test_incomplete_title_names_run_checkpoint_and_missing_rank() -> None:
    """The title alone says which run, which checkpoint, what is wrong: readable as a phone notification."""
    (a,) = alerts_for(incomplete_verdict())
    assert a.title == "[ckptwatch] run-a: checkpoint-5000 incomplete (rank 3 missing)"
    assert (a.kind, a.severity, a.key, a.recovery) == \
        ("incomplete", "error", (RUN, CKPT, "incomplete"), False)


def test_incomplete_body_has_host_run_step_path_problem_advice_and_time() -> None:
    """The body carries host, run, step, path, each problem with its advice, what to do next, UTC time."""
    (a,) = alerts_for(incomplete_verdict())
    body = a.body
    for needle in ("Host:", "gpu-node-7", f"Run:        {RUN}", f"Checkpoint: {CKPT}", "Step:       5000",
                   "Ranks:      3 of 4 present, missing 3", f"Problems:\n- missing_rank: {SHARD} is missing",
                   ("What to do:\n- Do not resume from this checkpoint; `ckptwatch latest RUN_DIR` names "
                    "the newest complete one."),
                   ("Next: do not resume from checkpoint-5000; ckptwatch latest says resume from "
                    f"checkpoint-4500 (step 4500): {RUN}/checkpoint-4500"), f"Time: {m.utc_iso(NOW)}"):
        assert needle in body, (needle, body)
    assert body.endswith(m.utc_iso(NOW)) and m.utc_iso(NOW).endswith("Z")


def test_no_resumable_checkpoint_says_so() -> None:
    """When no checkpoint of the run is complete, the advice says there is none instead of naming one."""
    (a,) = alerts_for(incomplete_verdict(), resume_from=None, step=None)
    assert "this run has no checkpoint that is safe to resume from" in a.body and "ckptwatch latest" in a.body


def test_corrupt_title_uses_first_problem_and_count() -> None:
    """Without missing ranks, the title names the first problem's kind and file and how many more."""
    v = Verdict(CKPT, 5000, "hf-trainer", Status.CORRUPT, problems=(
        Problem("truncated", SHARD, "x"), Problem("bad_json", f"{CKPT}/trainer_state.json", "y")))
    (a,) = alerts_for(v)
    assert a.title == ("[ckptwatch] run-a: checkpoint-5000 corrupt "
                       "(truncated: model-00004-of-00004.safetensors +1 more)")


def test_hazard_is_a_separate_alert_and_complete_clean_is_silent() -> None:
    """A hazard on a complete checkpoint raises resume_hazard only; a clean or in-progress one, nothing."""
    hz = Hazard("stub_weights_shadow_adapter", f"{CKPT}/model.safetensors",
                "a 1 KB stub beside adapter_model")
    v = Verdict(CKPT, 5000, "hf-trainer", Status.COMPLETE, hazards=(hz,))
    (a,) = alerts_for(v)
    assert a.kind == "resume_hazard" and a.severity == "warning" and a.key == (RUN, CKPT, "resume_hazard")
    assert a.title == "[ckptwatch] run-a: checkpoint-5000 would resume wrongly (stub_weights_shadow_adapter)"
    assert "a 1 KB stub beside adapter_model" in a.body
    assert alerts_for(Verdict(CKPT, 5000, "hf-trainer", Status.COMPLETE)) == ()
    assert alerts_for(Verdict(CKPT, 5000, "hf-trainer", Status.IN_PROGRESS,
                              problems=(Problem("in_progress", SHARD, "x"),))) == ()
    assert {k[2] for k in m.checkpoint_keys(RUN, CKPT)} == {"incomplete", "corrupt", "resume_hazard"}


def test_fingerprint_changes_when_problems_change() -> None:
    """A second missing shard changes the fingerprint (raised again); the same problems do not."""
    (a,) = alerts_for(incomplete_verdict())
    (b,) = alerts_for(incomplete_verdict())
    v2 = Verdict(CKPT, 5000, "hf-trainer", Status.INCOMPLETE, Ranks(4, (0, 1), "metadata"),
                 problems=(*incomplete_verdict().problems, Problem("missing_rank", f"{CKPT}/other", "z")))
    (c,) = alerts_for(v2)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert "ranks 2, 3 missing" in c.title


def test_advice_given_once_and_file_named_once() -> None:
    """Problems sharing advice print it once; a message that names its file is not prefixed with it again."""
    v = Verdict(CKPT, 5000, "hf-trainer", Status.INCOMPLETE, problems=(
        Problem("missing_file", f"{CKPT}/optimizer.pt", f"{CKPT}/optimizer.pt is missing"),
        Problem("missing_file", f"{CKPT}/scheduler.pt", "scheduler state is missing")))
    (a,) = alerts_for(v)
    assert a.body.count("Do not resume from this checkpoint") == 1
    assert f"- missing_file: {CKPT}/optimizer.pt is missing\n" in a.body
    assert f"- missing_file: scheduler state is missing ({CKPT}/scheduler.pt)\n" in a.body


def test_single_process_run_titles_the_problem_not_rank_0() -> None:
    """A one-rank run's missing rank is not news: the title names the first problem instead."""
    v = Verdict(CKPT, 5000, "hf-trainer", Status.INCOMPLETE, Ranks(1, (), "metadata"),
                problems=(Problem("no_commit_marker", f"{CKPT}/trainer_state.json", "x"),))
    (a,) = alerts_for(v)
    assert a.title.endswith("incomplete (no_commit_marker: trainer_state.json)")


def test_long_problem_lists_are_capped() -> None:
    """Chat clients truncate long posts: at most MAX_LISTED problems, then a count and where to see all."""
    v = Verdict(CKPT, 5000, "x", Status.CORRUPT,
                problems=tuple(Problem("truncated", f"f{i}", "t") for i in range(25)))
    (a,) = alerts_for(v)
    assert a.body.count("- truncated") == m.MAX_LISTED and "... and 15 more" in a.body


def test_recovery_notice_for_completed_checkpoint() -> None:
    """The checkpoint that finished writing gets a RESOLVED notice with the same key and severity."""
    v = Verdict(CKPT, 5000, "hf-trainer", Status.COMPLETE)
    r = m.checkpoint_recovered(v, "incomplete", run_root=RUN, host="gpu-node-7", now=NOW)
    assert r.recovery and r.key == (RUN, CKPT, "incomplete") and r.severity == "error"
    assert r.title == "[ckptwatch] RESOLVED run-a: checkpoint-5000 is now complete"


@pytest.mark.parametrize("writing,phrase",
                         [(True, "(files still being written)"), (False, "(nothing written)")])
def test_stalled_message_tells_hung_save_from_dead_trainer(writing: bool, phrase: str) -> None:
    """The stalled title says whether files are still changing; the body says where to look."""
    a = m.stalled_alert(run_root=RUN, host="h", now=NOW, last_checkpoint="checkpoint-5000",
                        last_at=NOW - 9000, silent_for=9000, threshold=3600,
                        threshold_source="alerts.stalled_after", writing=writing)
    assert a.title == f"[ckptwatch] run-a: no new checkpoint for 2h 30m {phrase}"
    assert "Threshold:       1h (alerts.stalled_after)" in a.body
    assert ("hung" in a.body) is writing


def test_loss_jump_message_and_attachment() -> None:
    """loss_jump names the resume step, the checkpoint, before/after/ratio, the hazards; it has the plot."""
    a = m.loss_jump_alert(run=RUN, at_step=5000, from_step=4500, from_checkpoint=f"{RUN}/checkpoint-4500",
                          before=0.09, after=2.31, ratio=25.7, scratch=True,
                          hazards=["stub_weights_shadow_adapter: model.safetensors is a stub"],
                          host="h", now=NOW, plot="/tmp/loss.png")
    assert a.title == "[ckptwatch] run-a: loss jumped x25.7 after resuming at step 5000 (from scratch?)"
    assert "0.09 before -> 2.31 after (x25.70)" in a.body and "training from scratch" in a.body
    assert "- stub_weights_shadow_adapter: model.safetensors is a stub" in a.body
    assert a.attachments == ("/tmp/loss.png",) and a.key == (RUN, f"{RUN}/checkpoint-4500", "loss_jump")


def test_disk_low_and_service_error_messages() -> None:
    """disk_low states free/total/percent and the thresholds crossed; service_error names the component."""
    d = m.disk_low_alert(path="/data", host="h", now=NOW, free=10 * 2**30, total=1000 * 2**30,
                         reasons=["alerts.disk_low_percent = 5% free"])
    assert d.title == "[ckptwatch] h: disk low at /data (10.0 GiB free, 1.0%)"
    assert "- alerts.disk_low_percent = 5% free" in d.body
    s = m.service_error_alert(component="watcher /data/runs", error="PermissionError: /data/runs/x", host="h",
                              now=NOW, action="give the service user read access")
    assert s.title == "[ckptwatch] h: service error in watcher /data/runs" and s.severity == "error"


def test_human_duration() -> None:
    """Durations read like speech."""
    durations = [m.human_duration(s) for s in (42, 600, 5400, 90000, 3 * 86400)]
    assert durations == ["42s", "10m", "1h 30m", "1d 1h", "3d"]


# --- conditions ------------------------------------------------------------------------------------------

HOUR = 3600.0


@pytest.mark.parametrize("times,configured,expected", [
    ([0, HOUR, 2 * HOUR, 3 * HOUR], None, 3 * HOUR),                 # 3x median interval
    ([0, 60, 120, 180], None, 600.0),                                # floor of 10 minutes
    ([0, HOUR, 2 * HOUR, 10 * HOUR, 11 * HOUR], None, 3 * HOUR),     # one long gap does not move the median
    ([0, HOUR], 7200.0, 7200.0),                                     # configured wins
    ([5 * HOUR], 7200.0, 7200.0),
])
def test_stalled_threshold(times: list[float], configured: float | None, expected: float) -> None:
    """The inferred threshold is 3x the median recent interval, at least 10 minutes; configured overrides."""
    got = stalled_threshold(times, configured)
    assert got is not None and got[0] == expected


def test_stalled_needs_two_checkpoints_unless_configured() -> None:
    """With one checkpoint and no stalled_after there is no interval to infer from: never stalled."""
    assert stalled([0.0], 100 * HOUR, None, writing=False) is None
    assert stalled([], 100 * HOUR, 60.0, writing=False) is None
    assert stalled([0.0], 2 * HOUR, HOUR, writing=False) is not None


def test_stalled_fires_only_past_threshold_and_carries_writing() -> None:
    """Silence up to the threshold is fine; beyond it the finding says how long and if files still change."""
    times = [0, HOUR, 2 * HOUR]
    assert stalled(times, 5 * HOUR, None, writing=False) is None
    f = stalled(times, 5 * HOUR + 1, None, writing=True)
    assert f is not None and f.silent_for == 3 * HOUR + 1 and f.threshold == 3 * HOUR and f.writing
    assert f.last_at == 2 * HOUR and "median" in f.threshold_source


@pytest.mark.parametrize("free,pct,free_bytes,next_save,was_low,low", [  # of a 1000-byte disk
    (400, 5.0, None, None, False, False),
    (40, 5.0, None, None, False, True),
    (400, 0.0, 500, None, False, True),          # absolute threshold
    (400, 5.0, None, 450, False, True),          # the next save would not fit
    (52, 5.0, None, None, True, True),           # hysteresis: still low until 10% above the line
    (56, 5.0, None, None, True, False),
    (52, 5.0, None, None, False, False),
])
def test_disk_low_thresholds(free: int, pct: float, free_bytes: int | None, next_save: int | None,
                             was_low: bool, low: bool) -> None:
    """Low when below any threshold; an open alert clears only 10% above it (no flapping)."""
    found = disk_low(DiskUsage("/data", 1000, free), percent=pct, free_bytes=free_bytes,
                     next_save_bytes=next_save, was_low=was_low)
    assert (found is not None) is low


def test_disk_usage_reads_a_real_filesystem(tmp_path: Path) -> None:
    """The psutil adapter returns sane numbers for a real path."""
    u = disk_usage(str(tmp_path))
    assert u.total > 0 and 0 <= u.free <= u.total and 0 <= u.free_percent <= 100


@given(gaps=st.lists(st.floats(1, 10 * 86400), min_size=1, max_size=30), silence=st.floats(0, 600))
def test_inferred_stall_never_fires_within_ten_minutes(gaps: list[float], silence: float) -> None:
    """Whatever the checkpoint cadence, the inferred threshold never calls a run stalled within 10 minutes."""
    times = [sum(gaps[:i]) for i in range(len(gaps) + 1)]
    assert stalled(times, times[-1] + silence, None, writing=False) is None


def test_mirror_failed_message_names_run_checkpoint_target_error_and_retry() -> None:
    """One alert per run (the key has no checkpoint); the same error class on another file is the same
    alert (fingerprint), another class is a new one."""
    error = "/backup/run-a/checkpoint-5000: [Errno 28] No space left on device while copying x"
    a = m.mirror_failed_alert(run_root=RUN, checkpoint=CKPT, target="/backup/run-a/checkpoint-5000",
                              error=error, host="gpu-node-7", now=NOW, retry_in=120)
    assert (a.kind, a.severity, a.key) == ("mirror_failed", "error", (RUN, "", "mirror_failed"))
    assert a.title == "[ckptwatch] run-a: mirror to /backup/run-a/checkpoint-5000 failed"
    for text in ("Run:", RUN, "Checkpoint:", "checkpoint-5000", "Error:", "No space left on device",
                 "retries in 2m", "retention keeps the checkpoint", "gpu-node-7"):
        assert text in a.body, text
    other_file = m.mirror_failed_alert(run_root=RUN, checkpoint=CKPT, target="t", error=error.replace(
        "checkpoint-5000", "checkpoint-5500"), host="h", now=NOW, retry_in=60)
    assert other_file.fingerprint == a.fingerprint
    refused = m.mirror_failed_alert(run_root=RUN, checkpoint=CKPT, target="t", error="PermissionError: x",
                                    host="h", now=NOW, retry_in=60)
    assert refused.fingerprint != a.fingerprint
