"""The per-pass alert plan (pure): which alerts a judged run calls for, which open ones it clears, and
when to look again. Verdicts here are plain values (the planner reads nothing from disk)."""

from __future__ import annotations

from ckptwatch.alerts.plan import FINISHED_AFTER, plan_run, plan_vanished_runs
from ckptwatch.model import Hazard, Problem, RunReport, Status, Verdict
from ckptwatch.resume import run_report

T = 1_795_000_000.0
RUN = "/data/runs/run-a"
HOUR = 3600.0


def _v(step: int, status: Status, at: float, problems=(), hazards=()) -> Verdict:
    return Verdict(f"{RUN}/checkpoint-{step}", step, "hf-trainer", status, None, tuple(problems),
                   tuple(hazards), at)


def _run(*verdicts: Verdict, hazards=()) -> RunReport:
    return run_report(RUN, "hf-trainer", verdicts, (), tuple(hazards))


MISSING = Problem("missing_file", f"{RUN}/checkpoint-3/optimizer.pt", "optimizer.pt is missing")


def _plan(run: RunReport, now: float, open_keys=None, stalled_after=None):
    return plan_run(run, open_keys=open_keys or {}, now=now, host="h", stale_after=1800.0,
                    stalled_after=stalled_after)


def test_steady_run_calls_for_nothing_and_wakes_when_it_would_stall() -> None:
    """Hourly complete checkpoints: no alert; look again 3 intervals after the newest one."""
    run = _run(*(_v(i, Status.COMPLETE, T + i * HOUR) for i in range(1, 5)))
    plan = _plan(run, T + 4 * HOUR + 60)
    assert plan.raises == () and plan.clears == ()
    assert plan.look_again_at == T + 4 * HOUR + 3 * HOUR + 1


def test_silent_run_is_stalled_then_cleared_by_a_new_checkpoint() -> None:
    """Silence past 3x the median interval raises stalled; the next complete checkpoint clears it."""
    verdicts = [_v(i, Status.COMPLETE, T + i * HOUR) for i in range(1, 5)]
    plan = _plan(_run(*verdicts), T + 8 * HOUR)
    (alert,) = plan.raises
    assert alert.kind == "stalled"
    assert "no new checkpoint for 4h" in alert.title and "(nothing written)" in alert.title
    after = _plan(_run(*verdicts, _v(9, Status.COMPLETE, T + 9 * HOUR)), T + 9 * HOUR + 60,
                  open_keys={alert.key: alert.fingerprint})
    assert after.raises == () and [k for k, _ in after.clears] == [alert.key]
    assert "checkpoint-9 written" in after.clears[0][1].body


def test_run_silent_for_a_day_past_its_threshold_is_finished_not_stalled() -> None:
    """A run that ended long ago does not page anyone, and an open stalled alert is not 'resolved'."""
    verdicts = [_v(i, Status.COMPLETE, T + i * HOUR) for i in range(1, 5)]
    late = T + 4 * HOUR + 3 * HOUR + FINISHED_AFTER + 60
    assert _plan(_run(*verdicts), late).raises == ()
    key = (RUN, "", "stalled")
    assert _plan(_run(*verdicts), late, open_keys={key: "x"}).clears == ()


def test_incomplete_newest_waits_for_stale_after_older_one_does_not() -> None:
    """Newest incomplete: no alert until stale_after, then one; older than a complete one: at once."""
    older = _v(3, Status.INCOMPLETE, T, [MISSING])
    newer_ok = _v(4, Status.COMPLETE, T + 60)
    newest_bad = _v(5, Status.INCOMPLETE, T + 120, [MISSING])
    plan = _plan(_run(older, newer_ok, newest_bad), T + 200)
    assert [(a.kind, a.key[1].rsplit("-", 1)[1]) for a in plan.raises] == [("incomplete", "3")]
    assert plan.look_again_at == T + 120 + 1800 + 1
    later = _plan(_run(older, newer_ok, newest_bad), T + 120 + 1800)
    assert [a.key[1].rsplit("-", 1)[1] for a in later.raises] == ["3", "5"]


def test_in_progress_checkpoint_keeps_its_alert_open() -> None:
    """A checkpoint being rewritten neither re-alerts nor resolves until it settles."""
    key = (RUN, f"{RUN}/checkpoint-5", "incomplete")
    plan = _plan(_run(_v(4, Status.COMPLETE, T), _v(5, Status.IN_PROGRESS, T + 10)), T + 20,
                 open_keys={key: "f"})
    assert plan.raises == () and plan.clears == ()


def test_completed_checkpoint_resolves_and_deleted_one_is_gone() -> None:
    """An alerted checkpoint that became complete gets RESOLVED; one that was deleted gets 'was removed'."""
    done = (RUN, f"{RUN}/checkpoint-5", "incomplete")
    gone = (RUN, f"{RUN}/checkpoint-3", "corrupt")
    plan = _plan(_run(_v(4, Status.COMPLETE, T), _v(5, Status.COMPLETE, T + 10)), T + 20,
                 open_keys={done: "a", gone: "b"})
    titles = {k: a.title for k, a in plan.clears}
    assert titles[done].endswith("checkpoint-5 is now complete")
    assert titles[gone].endswith("checkpoint-3 was removed")


def test_run_level_hazard_alerted_but_newest_not_resumable_left_to_the_checkpoint() -> None:
    """A `latest` pointer naming an incomplete step is a run alert; newest_not_resumable is not repeated."""
    hazards = [Hazard("latest_points_to_incomplete", f"{RUN}/latest",
                      "latest names global_step5, incomplete"),
               Hazard("newest_not_resumable", f"{RUN}/checkpoint-5", "newest is incomplete")]
    plan = _plan(_run(_v(4, Status.COMPLETE, T), hazards=hazards), T + 20)
    (alert,) = plan.raises
    assert alert.key == (RUN, "", "resume_hazard") and "latest_points_to_incomplete" in alert.title
    assert "newest_not_resumable" not in alert.body


def test_vanished_run_resolves_its_open_alerts() -> None:
    """After a whole-root pass, alerts of a run that no longer exists are resolved as removed."""
    key = (RUN, f"{RUN}/checkpoint-3", "incomplete")
    other = ("/elsewhere/run-z", "/elsewhere/run-z/checkpoint-1", "corrupt")
    clears = plan_vanished_runs("/data/runs", set(), open_keys={key: "a", other: "b"}, now=T, host="h")
    assert [k for k, _ in clears] == [key]
