"""Pure message builders: a verdict or a finding -> an ``Alert`` whose text stands on its own.

Why pure: what an alert says is the product (it is read at 3 a.m. on a phone), so every wording is
pinned by tests that need no network, no clock and no host: ``host`` and ``now`` are parameters.

Why plain text: the same message goes to chat and to email. Short labelled lines, one problem per
line, the action last but one and the time last, read well in both.

An alert's ``key`` is ``(run, checkpoint, kind)``: what the ledger de-duplicates on and what a recovery
clears. Its ``fingerprint`` says what "the same alert" means: a changed fingerprint under an open key
(a second rank went missing) is raised again; an unchanged one is not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ckptwatch.alerts.kinds import ERROR, KIND_SEVERITY, WARNING
from ckptwatch.model import Hazard, Problem, Severity, Status, Verdict
from ckptwatch.vocabulary import advice_for, severity_of

PREFIX = "[ckptwatch]"
MAX_LISTED = 10  # problems listed in one message; chat clients truncate long posts

AlertKey = tuple[str, str, str]  # (run, checkpoint, kind)


@dataclass(frozen=True)
class Alert:
    """One message about one thing. ``recovery`` marks the notice that the thing is resolved."""

    kind: str
    severity: str
    key: AlertKey
    title: str
    body: str
    recovery: bool = False
    attachments: tuple[str, ...] = ()
    fingerprint: str = ""


def utc_iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_duration(seconds: float) -> str:
    """``5400`` -> ``"1h 30m"``: durations in messages read like a person would say them."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    parts = [f"{d}d"] if d else []
    if h:
        parts.append(f"{h}h")
    if m and not d:
        parts.append(f"{m}m")
    return " ".join(parts) or "0s"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _name(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or path


def _render(lines: Sequence[tuple[str, str]], sections: Sequence[tuple[str, Sequence[str]]], next_step: str,
            now: float) -> str:
    width = max((len(label) for label, _ in lines), default=0) + 1
    out = [f"{(label + ':').ljust(width)} {value}" for label, value in lines]
    for heading, items in sections:
        if items:
            out += ["", f"{heading}:"]
            out += [f"- {item}" for item in items[:MAX_LISTED]]
            if len(items) > MAX_LISTED:
                out.append(f"- ... and {len(items) - MAX_LISTED} more (`ckptwatch once --json` lists all)")
    if next_step:
        out += ["", f"Next: {next_step}"]
    out.append(f"Time: {utc_iso(now)}")
    return "\n".join(out)


def _resume_advice(resume_from: str | None, resume_step: int | None) -> str:
    if not resume_from:
        return ("this run has no checkpoint that is safe to resume from (none is complete, or each complete "
                "one has a resume hazard that blocks it): `ckptwatch latest RUN_DIR` says why")
    step = f" (step {resume_step})" if resume_step is not None else ""
    return f"ckptwatch latest says resume from {_name(resume_from)}{step}: {resume_from}"


# --- checkpoint verdicts ---------------------------------------------------------------------------------

VERDICT_KINDS = ("incomplete", "corrupt", "resume_hazard")


def checkpoint_keys(run_root: str, checkpoint: str) -> tuple[AlertKey, ...]:
    """Every key a checkpoint's verdict can open: clear the ones ``checkpoint_alerts`` no longer returns."""
    return tuple((run_root, checkpoint, k) for k in VERDICT_KINDS)


def _findings(items: Sequence[Problem | Hazard]) -> tuple[list[str], list[str]]:
    """One line per finding (kind: message, the file added if the message does not name it) and the
    advice once per distinct text: four missing files do not need the same advice four times."""
    lines, advice = [], {}
    for p in items:
        lines.append(f"{p.kind}: {p.message if p.file in p.message else f'{p.message} ({p.file})'}")
        if a := advice_for(p.kind):
            advice.setdefault(a.rstrip(".") + ".")
    return lines, list(advice)


def _summary(v: Verdict) -> str:
    missing = v.ranks.missing if v.ranks and (v.ranks.expected or 0) > 1 else ()
    if missing:
        shown = ", ".join(str(r) for r in missing[:5]) + (", ..." if len(missing) > 5 else "")
        return f"rank{'s' if len(missing) > 1 else ''} {shown} missing"
    decisive = [p for p in v.problems if severity_of(p.kind) is not Severity.WARNING]  # why not complete
    if not decisive:
        return ""
    first = decisive[0]
    more = f" +{len(decisive) - 1} more" if len(decisive) > 1 else ""
    return f"{first.kind}: {_name(first.file)}{more}"


def checkpoint_alerts(v: Verdict, *, run_root: str, host: str, now: float, resume_from: str | None,
                      resume_step: int | None) -> tuple[Alert, ...]:
    """The alerts one verdict calls for: its status (incomplete/corrupt) and its resume hazards.

    Two alerts, not one, because they clear separately: a checkpoint that finishes writing stops being
    incomplete but may still carry a hazard. ``in_progress`` and a clean ``complete`` call for none.
    """
    run, ckpt = _name(run_root), _name(v.path)
    step = str(v.step) if v.step is not None else "unknown"
    facts = [("Host", host), ("Run", run_root), ("Checkpoint", v.path), ("Step", step),
             ("Layout", v.layout), ("Status", v.status.value)]
    if v.ranks and v.ranks.expected is not None:
        facts.append(("Ranks", f"{len(v.ranks.present)} of {v.ranks.expected} present"
                               + (f", missing {', '.join(map(str, v.ranks.missing))}" if v.ranks.missing
                                  else "")))
    problems, problem_advice = _findings(v.problems)
    hazards, hazard_advice = _findings(v.hazards)
    out = []
    if v.status in (Status.INCOMPLETE, Status.CORRUPT):
        kind = v.status.value
        summary = _summary(v)
        out.append(Alert(
            kind=kind, severity=KIND_SEVERITY[kind], key=(run_root, v.path, kind),
            title=f"{PREFIX} {run}: {ckpt} {kind}" + (f" ({summary})" if summary else ""),
            body=_render(facts, [("Problems", problems), ("Resume hazards", hazards),
                                 ("What to do", [*problem_advice, *hazard_advice])],
                         f"do not resume from {ckpt}; " + _resume_advice(resume_from, resume_step), now),
            fingerprint=repr(sorted((p.kind, p.file) for p in v.problems))))
    if v.hazards:
        first = v.hazards[0]
        more = f" +{len(v.hazards) - 1} more" if len(v.hazards) > 1 else ""
        advice = ("fix the hazard before resuming from it (What to do, above), or "
                  + _resume_advice(resume_from, resume_step)
                  if resume_from and resume_from != v.path else
                  "fix the hazard before resuming from it (What to do, above)")
        out.append(Alert(
            kind="resume_hazard", severity=KIND_SEVERITY["resume_hazard"],
            key=(run_root, v.path, "resume_hazard"),
            title=f"{PREFIX} {run}: {ckpt} would resume wrongly ({first.kind}{more})",
            body=_render(facts, [("Resume hazards", hazards), ("What to do", hazard_advice)], advice, now),
            fingerprint=repr(sorted((h.kind, h.file) for h in v.hazards))))
    return tuple(out)


def checkpoint_recovered(v: Verdict, kind: str, *, run_root: str, host: str, now: float,
                         severity: str | None = None) -> Alert:
    """The notice that a checkpoint's ``kind`` alert is resolved (it completed, or the hazard is gone).

    ``severity`` defaults to the kind's own, so the notice follows the alert's route.
    """
    run, ckpt = _name(run_root), _name(v.path)
    if kind == "resume_hazard":
        what = "no longer has a resume hazard"
    elif v.status is Status.COMPLETE:
        what = "is now complete"
    elif not os.path.exists(v.path) or v.status is Status.IN_PROGRESS:
        what = f"is no longer {kind} ({v.status.value})"
    else:
        what = f"is no longer {kind} (now {v.status.value})"
    facts = [("Host", host), ("Run", run_root), ("Checkpoint", v.path),
             ("Step", str(v.step) if v.step is not None else "unknown"), ("Status", v.status.value)]
    return Alert(kind=kind, severity=severity or KIND_SEVERITY[kind], key=(run_root, v.path, kind),
                 title=f"{PREFIX} RESOLVED {run}: {ckpt} {what}",
                 body=_render(facts, [], "nothing; this resolves the earlier alert", now), recovery=True)


def checkpoint_gone(key: AlertKey, *, host: str, now: float) -> Alert:
    """The notice that an alerted checkpoint no longer exists (deleted or rotated away)."""
    run_root, path, kind = key
    return Alert(kind=kind, severity=KIND_SEVERITY.get(kind, ERROR), key=key,
                 title=f"{PREFIX} RESOLVED {_name(run_root)}: {_name(path)} was removed",
                 body=_render([("Host", host), ("Run", run_root), ("Checkpoint", path)], [],
                              f"nothing; the {kind} checkpoint is gone, so is its alert", now), recovery=True)


# --- conditions ------------------------------------------------------------------------------------------


def stalled_alert(*, run_root: str, host: str, now: float, last_checkpoint: str | None, last_at: float,
                  silent_for: float, threshold: float, threshold_source: str, writing: bool) -> Alert:
    """A run that stopped producing checkpoints. ``writing`` tells "hung mid-save" from "dead"."""
    run = _name(run_root)
    if writing:
        state = "files are still being written, but no checkpoint has completed"
        advice = ("check whether the save is hung (a stuck rank, a full or slow filesystem): "
                  "look at the trainer's log and `ckptwatch status`")
    else:
        state = "nothing in the run dir has been written since"
        advice = "check whether the trainer is still alive (scheduler job state, its log, GPU use)"
    facts = [("Host", host), ("Run", run_root),
             ("Last checkpoint", f"{last_checkpoint or 'unknown'} at {utc_iso(last_at)}"),
             ("Silent for", human_duration(silent_for)),
             ("Threshold", f"{human_duration(threshold)} ({threshold_source})"),
             ("Writing", "yes: " + state if writing else "no: " + state)]
    return Alert(kind="stalled", severity=KIND_SEVERITY["stalled"], key=(run_root, "", "stalled"),
                 title=f"{PREFIX} {run}: no new checkpoint for {human_duration(silent_for)}"
                       + (" (files still being written)" if writing else " (nothing written)"),
                 body=_render(facts, [], advice, now), fingerprint=repr(last_at))


def disk_low_alert(*, path: str, host: str, now: float, free: int, total: int,
                   reasons: Sequence[str]) -> Alert:
    """A watched filesystem running out of space: the next save may be truncated."""
    pct = 100.0 * free / total if total else 0.0
    facts = [("Host", host), ("Path", path),
             ("Free", f"{human_bytes(free)} of {human_bytes(total)} ({pct:.1f}%)")]
    return Alert(kind="disk_low", severity=KIND_SEVERITY["disk_low"], key=(path, "", "disk_low"),
                 title=f"{PREFIX} {host}: disk low at {path} ({human_bytes(free)} free, {pct:.1f}%)",
                 body=_render(facts, [("Below", list(reasons))],
                              "free space (old checkpoints: `ckptwatch once --json` shows which are "
                              "complete) before the next save is truncated", now))


def retention_blocked_alert(*, run_root: str, host: str, now: float, why: str, advice: str) -> Alert:
    """Retention refused to delete in a run (an anomalous scan), or cannot reach ``min_free``."""
    return Alert(kind="retention_blocked", severity=KIND_SEVERITY["retention_blocked"],
                 key=(run_root, "", "retention_blocked"),
                 title=f"{PREFIX} {_name(run_root)}: retention deleted nothing",
                 body=_render([("Host", host), ("Run", run_root), ("Why", why)], [], advice, now),
                 fingerprint=why.split(" (", 1)[0])


def mirror_failed_alert(*, run_root: str, checkpoint: str, target: str, error: str, host: str, now: float,
                        retry_in: float) -> Alert:
    """A checkpoint of the run could not be copied to its mirror target: the off-box backup is behind.

    One alert per run (the key has no checkpoint): the next checkpoint failing the same way is the same
    fault, not a new page. The fingerprint is the error's class, so a different fault is raised again.
    """
    return Alert(kind="mirror_failed", severity=KIND_SEVERITY["mirror_failed"],
                 key=(run_root, "", "mirror_failed"),
                 title=f"{PREFIX} {_name(run_root)}: mirror to {target} failed",
                 body=_render([("Host", host), ("Run", run_root), ("Checkpoint", _name(checkpoint)),
                               ("Target", target), ("Error", error)], [],
                              f"fix the cause named above (space, permissions, credentials, the endpoint); "
                              f"ckptwatch retries in {human_duration(retry_in)} and on every rescan after "
                              "that. Until a copy is committed, retention keeps the checkpoint.", now),
                 fingerprint=_mirror_error_class(error))


def _mirror_error_class(error: str) -> str:
    """The mirror's errors name files first (``/backup/run/ckpt-5/x: No space left on device while copying
    /data/...``): without its paths and numbers, the next checkpoint failing the same way is the same
    alert, and a different cause is a new one."""
    import re

    return " ".join(re.sub(r"\d+", "N", re.sub(r"\S*/\S*", "", error)).split())


def condition_cleared(key: AlertKey, *, host: str, now: float, detail: str) -> Alert:
    """A generic recovery notice for a condition (``stalled``, ``disk_low``, ``service_error``)."""
    scope, checkpoint, kind = key
    where = _name(scope) if kind != "disk_low" else scope
    return Alert(kind=kind, severity=KIND_SEVERITY.get(kind, WARNING), key=key,
                 title=f"{PREFIX} RESOLVED {where}: {kind.replace('_', ' ')} cleared",
                 body=_render([("Host", host), ("Where", scope + (f" {checkpoint}" if checkpoint else "")),
                               ("Now", detail)], [], "nothing; this resolves the earlier alert", now),
                 recovery=True)


def service_error_alert(*, component: str, error: str, host: str, now: float, action: str) -> Alert:
    """ckptwatch itself cannot do part of its job (a root it cannot read, an observer that keeps dying)."""
    return Alert(kind="service_error", severity=KIND_SEVERITY["service_error"],
                 key=("service", component, "service_error"),
                 title=f"{PREFIX} {host}: service error in {component}",
                 body=_render([("Host", host), ("Component", component), ("Error", error)], [], action, now),
                 fingerprint=_error_class(error))


def _error_class(error: str) -> str:
    """``PermissionError: [Errno 13] ... 'run-b'`` -> ``PermissionError [Errno 13]``: the same fault naming
    another file on the next pass is the same alert, not a new one every pass."""
    import re

    errno_ = re.search(r"\[Errno \d+\]", error)
    return error.split(":", 1)[0] + (f" {errno_.group(0)}" if errno_ else "")


def loss_jump_alert(*, run: str, at_step: int, from_step: int | None, from_checkpoint: str | None,
                    before: float | None, after: float | None, ratio: float | None, scratch: bool,
                    hazards: Sequence[str], host: str, now: float, plot: str | None = None,
                    nonfinite: bool = False) -> Alert:
    """A resume whose loss jumped: the run resumed from the wrong thing (or from nothing at all).

    ``scratch``: the loss after the resume looks like an untrained model's, so the resume most likely
    loaded no weights. ``hazards``: messages of the resumed-from checkpoint's hazards, the likely cause.
    ``plot``: a PNG of the loss around the resume, attached where the channel supports attachments.
    ``nonfinite``: the loss after the resume is NaN or inf (no ratio to speak of).
    """
    def num(x: float | None) -> str:
        return "?" if x is None else f"{x:.4g}"

    name = _name(run)
    where = f"{_name(from_checkpoint)} (step {from_step})" if from_checkpoint else (
        f"step {from_step}" if from_step is not None else "an unknown checkpoint")
    facts = [("Host", host), ("Run", run), ("Resumed at", f"step {at_step}"), ("Resumed from", where),
             ("Loss", f"{num(before)} before -> {num(after)} after"
                      + (f" (x{ratio:.2f})" if ratio is not None and not nonfinite else ""))]
    if scratch:
        facts.append(("Looks like", "training from scratch: the resume probably loaded no trained weights"))
    if from_checkpoint and hazards:
        advice = (f"stop the run; fix what the hazards above say in {_name(from_checkpoint)}, "
                  "or resume from the checkpoint `ckptwatch latest` names")
    else:
        advice = ("stop the run and check what the resume loaded (the trainer log's first lines after the "
                  "restart)")
    return Alert(kind="loss_jump", severity=KIND_SEVERITY["loss_jump"],
                 key=(run, from_checkpoint or f"step-{at_step}", "loss_jump"),
                 title=(f"{PREFIX} {name}: loss is {num(after)} after resuming at step {at_step}" if nonfinite
                        or ratio is None else
                        f"{PREFIX} {name}: loss jumped x{ratio:.1f} after resuming at step {at_step}"
                        + (" (from scratch?)" if scratch else "")),
                 body=_render(facts, [("Hazards of the resumed-from checkpoint", list(hazards))], advice,
                              now),
                 attachments=(plot,) if plot else (), fingerprint=repr((at_step, from_step)))


# --- notices about delivery itself -----------------------------------------------------------------------


def channel_failing_notice(*, channel: str, since: float, attempts: int, reason: str, host: str,
                           now: float) -> Alert:
    """Told on the other channels when one keeps failing (``channel`` is already masked)."""
    return Alert(kind="service_error", severity=ERROR, key=("service", f"channel {channel}", "service_error"),
                 title=f"{PREFIX} {host}: alert channel {channel} failing since {utc_iso(since)}",
                 body=_render([("Host", host), ("Channel", channel), ("Failing since", utc_iso(since)),
                               ("Attempts", str(attempts)), ("Last error", reason)], [],
                              "check the channel's URL and credentials with `ckptwatch alert test`; alerts "
                              "for it are kept and summarised once it works again", now))


def channel_recovered_notice(*, channel: str, since: float, missed: Sequence[str], host: str,
                             now: float) -> Alert:
    """Sent everywhere when a failing channel works again, listing what it missed."""
    return Alert(kind="service_error", severity=ERROR, key=("service", f"channel {channel}", "service_error"),
                 title=f"{PREFIX} RESOLVED {host}: alert channel {channel} works again",
                 body=_render([("Host", host), ("Channel", channel), ("Failing since", utc_iso(since)),
                               ("Down for", human_duration(now - since)), ("Missed", str(len(missed)))],
                              [("Alerts this channel missed", list(missed))],
                              "`ckptwatch status` shows what is still open" if missed else "nothing", now),
                 recovery=True)


def digest(*, channel: str, held: Sequence[Alert], since: float, host: str, now: float) -> Alert:
    """What the rate limit held back on one channel, sent as one message when the window allows."""
    return Alert(kind="service_error", severity=WARNING,
                 key=("service", f"digest {channel}", "service_error"),
                 title=f"{PREFIX} {host}: {len(held)} alert{'s' if len(held) != 1 else ''} held back by the "
                       f"rate limit",
                 body=_render([("Host", host), ("Channel", channel), ("Held since", utc_iso(since))],
                              [("Held back", [f"{a.title} ({'resolved' if a.recovery else a.severity})"
                                              for a in held])],
                              "`ckptwatch status` shows what is still open; raise alerts.max_per_hour "
                              "if this is normal traffic", now))


def alert_test_message(*, host: str, now: float) -> Alert:
    """What ``ckptwatch alert test`` sends."""
    return Alert(kind="service_error", severity=WARNING, key=("service", "alert test", "service_error"),
                 title=f"{PREFIX} {host}: test alert",
                 body=_render([("Host", host)], [], "nothing; this checks that alerts reach this channel",
                              now))
