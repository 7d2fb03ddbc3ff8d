"""Which alerts one judged run calls for, and which open ones it clears: a pure decision per pass.

Why a plan and not "alert on each change": conditions depend on time as well as on verdicts (a
checkpoint becomes alert-worthy once it has stayed incomplete for ``stale_after``; a run becomes
stalled when nothing new arrives), and an alert must clear when its condition does, whatever changed.
So every pass over a run states the whole desired set; the ledger (via the dispatcher) turns that into
"send once" and "send a recovery notice once". The plan also says when the run should be looked at
again even if no file event comes: when a pending incomplete checkpoint turns stale, or when the run
would count as stalled.

Rules (defaults documented in the README's alert section):
- ``corrupt``: alerted as soon as the checkpoint is settled (the second look and the open-files check
  have already ruled out a writer still at work).
- ``incomplete``: alerted once the checkpoint stayed incomplete for ``stale_after`` after its last
  write (DESIGN.md invariant 2), or at once if a newer checkpoint of the run is complete (the writer
  moved on: the missing part will never arrive).
- ``resume_hazard``: per checkpoint for its own hazards, and per run for the run-level ones (a
  ``latest`` pointer naming an incomplete step); ``newest_not_resumable`` is left to the newest
  checkpoint's own incomplete/corrupt alert.
- ``stalled``: the newest complete checkpoint is older than the threshold (``alerts.stalled_after``,
  else 3x the median interval of recent checkpoints, at least 10 min), while the run is still fresh
  enough to be alive: a run silent for a day past its threshold is treated as finished, so a catch-up
  over a root of old runs does not page anyone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ckptwatch.alerts import messages
from ckptwatch.alerts.conditions import stalled
from ckptwatch.alerts.messages import Alert, AlertKey
from ckptwatch.model import Hazard, RunReport, Status, Verdict
from ckptwatch.vocabulary import full_message

FINISHED_AFTER = 86400.0  # silence beyond threshold + this: the run ended; no stalled alert
RUN_HAZARDS_HANDLED_ELSEWHERE = {"newest_not_resumable"}


@dataclass(frozen=True)
class RunAlertPlan:
    raises: tuple[Alert, ...] = ()
    clears: tuple[tuple[AlertKey, Alert], ...] = ()
    look_again_at: float | None = None  # judge this run again then, even without a file event


def plan_run(run: RunReport, *, open_keys: Mapping[AlertKey, str], now: float, host: str, stale_after: float,
             stalled_after: float | None, stalled_enabled: bool = True) -> RunAlertPlan:
    """The alerts ``run`` calls for at ``now``; ``open_keys`` (key -> fingerprint): what the ledger holds."""
    raises: list[Alert] = []
    wanted: set[AlertKey] = set()
    wake: list[float] = []
    verdicts = list(run.checkpoints)
    resume_step = run.newest_resumable.step if run.newest_resumable else None
    complete_after = verdicts.index(run.newest_complete) if run.newest_complete is not None else -1

    for i, v in enumerate(verdicts):
        if v.status is Status.IN_PROGRESS:
            # Unsettled: say nothing new, clear nothing (its earlier alert stands until it settles).
            wanted.update(k for k in messages.checkpoint_keys(run.root, v.path) if k in open_keys)
            continue
        for alert in messages.checkpoint_alerts(v, run_root=run.root, host=host, now=now,
                                                resume_from=run.latest_resumable, resume_step=resume_step):
            if alert.kind == "incomplete" and not _incomplete_is_final(v, i, complete_after, now,
                                                                       stale_after):
                wake.append(v.newest_mtime + stale_after + 1.0)
                if alert.key in open_keys:
                    wanted.add(alert.key)
                continue
            wanted.add(alert.key)
            raises.append(alert)

    run_hazards = [h for h in run.hazards if h.kind not in RUN_HAZARDS_HANDLED_ELSEWHERE]
    if run_hazards:
        alert = _run_hazard_alert(run, run_hazards, host, now)
        wanted.add(alert.key)
        raises.append(alert)

    stall_alert, stall_wake, finished = _stalled(run, verdicts, now, host, stalled_after, stalled_enabled)
    if finished:  # an open stalled alert stays open (no "resolved" notice for a run that simply ended)
        wanted.update(k for k in open_keys if k == (run.root, "", "stalled"))
    if stall_alert is not None:
        wanted.add(stall_alert.key)
        raises.append(stall_alert)
    if stall_wake is not None:
        wake.append(stall_wake)

    by_path = {v.path: v for v in verdicts}
    clears: list[tuple[AlertKey, Alert]] = []
    for key in open_keys:
        run_root, checkpoint, kind = key
        if run_root != run.root or key in wanted or kind not in (*messages.VERDICT_KINDS, "stalled"):
            continue
        if kind == "stalled":
            newest = run.newest_complete
            detail = f"{os.path.basename(newest.path)} written" if newest else "the run is quiet on purpose"
            clears.append((key, messages.condition_cleared(key, host=host, now=now, detail=detail)))
        elif checkpoint == "":
            clears.append((key, messages.condition_cleared(key, host=host, now=now,
                                                           detail="the run-level resume hazard is gone")))
        elif checkpoint in by_path:
            clears.append((key, messages.checkpoint_recovered(by_path[checkpoint], kind, run_root=run.root,
                                                              host=host, now=now)))
        else:
            clears.append((key, messages.checkpoint_gone(key, host=host, now=now)))
    return RunAlertPlan(tuple(raises), tuple(clears), min(wake) if wake else None)


def plan_vanished_runs(root: str, live_runs: set[str], *, open_keys: Mapping[AlertKey, str], now: float,
                       host: str) -> tuple[tuple[AlertKey, Alert], ...]:
    """Open alerts of runs under ``root`` that a whole-root pass no longer finds: resolved as gone."""
    base = root.rstrip(os.sep) + os.sep
    out = []
    for key in open_keys:
        run_root, _, kind = key
        if kind in (*messages.VERDICT_KINDS, "stalled") and (run_root == root or run_root.startswith(base)) \
                and run_root not in live_runs:
            out.append((key, messages.checkpoint_gone(key, host=host, now=now) if key[1] else
                        messages.condition_cleared(key, host=host, now=now,
                                                   detail="the run no longer exists")))
    return tuple(out)


def _incomplete_is_final(v: Verdict, index: int, newest_complete: int, now: float,
                         stale_after: float) -> bool:
    return newest_complete > index or now - v.newest_mtime >= stale_after


def _run_hazard_alert(run: RunReport, hazards: list[Hazard], host: str, now: float) -> Alert:
    first = hazards[0]
    lines = [f"{h.kind}: {full_message(h)}" for h in hazards]
    nxt = (f"resume from {run.latest_resumable}" if run.latest_resumable
           else "no complete checkpoint exists in this run")
    body = (f"Host: {host}\nRun:  {run.root}\n\nResume hazards:\n" + "\n".join(f"- {x}" for x in lines)
            + f"\n\nNext: {nxt}\nTime: {messages.utc_iso(now)}")
    return Alert(kind="resume_hazard", severity="warning", key=(run.root, "", "resume_hazard"),
                 title=f"{messages.PREFIX} {os.path.basename(run.root.rstrip(os.sep))}: a resume would pick "
                       f"the wrong checkpoint ({first.kind})",
                 body=body, fingerprint=repr(sorted((h.kind, h.file) for h in hazards)))


def _stalled(run: RunReport, verdicts: list[Verdict], now: float, host: str, configured: float | None,
             enabled: bool) -> tuple[Alert | None, float | None, bool]:
    """(the alert or None, when the run would become stalled, whether it looks finished)."""
    if not enabled:
        return None, None, False
    times = [v.newest_mtime for v in verdicts if v.status is Status.COMPLETE and v.newest_mtime]
    if not times:
        return None, None, False
    writing = any(v.status is Status.IN_PROGRESS for v in verdicts)
    finding = stalled(times, now, configured, writing=writing)
    if finding is None:
        from ckptwatch.alerts.conditions import stalled_threshold

        threshold = stalled_threshold(times, configured)
        return None, (max(times) + threshold[0] + 1.0) if threshold else None, False
    if finding.silent_for > finding.threshold + FINISHED_AFTER:
        return None, None, True  # finished long ago (or ckptwatch was away): not a page
    newest = run.newest_complete
    return messages.stalled_alert(run_root=run.root, host=host, now=now,
                                  last_checkpoint=os.path.basename(newest.path) if newest else None,
                                  last_at=finding.last_at, silent_for=finding.silent_for,
                                  threshold=finding.threshold, threshold_source=finding.threshold_source,
                                  writing=finding.writing), None, False
