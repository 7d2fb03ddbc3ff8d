"""Output: the versioned ``--json`` contract and a table a person can read at 3 a.m.

JSON follows DESIGN.md ``version: 1``; additions (``severity``, ``ranks.source``, run- and top-level
``problems``/``hazards``, ``newest_mtime``, ``path_b64``/``root_b64``) are extensions, never renames.
Paths are display strings (a byte that is not UTF-8 shows as ``\\xNN``), so each checkpoint's
``path_b64`` and each run's ``root_b64`` carry the exact bytes for a consumer that must open them
(null when the disk cannot tell which path was meant: ``shellpath.exact_bytes``). ``loss`` (resumes
found in the run's loss history, each judged) appears when the loss watch ran; ``retention`` (the plan:
``keep``, ``delete``, ``reasons`` as DESIGN.md has them, plus ``bytes_freed``, ``blocked``, ``shortfall``)
when the run's watch has ``[watch.retention]``; ``mirror`` (``{"to", "checkpoints": [{"path", "copy",
"state": committed|not_yet|failed|skipped, "reason"}]}`` for every complete checkpoint, from the target's
markers: ``mirror.status``) when ``once --config`` names a watch with ``[watch.mirror]``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from ckptwatch.engine import RootReport
from ckptwatch.findings import hazard_json, problem_json
from ckptwatch.model import Hazard, Problem, RunReport, Status, Verdict
from ckptwatch.resume import skipped_newer
from ckptwatch.shellpath import for_terminal, path_b64
from ckptwatch.vocabulary import advice_for, full_message

JSON_VERSION = 1



def verdict_json(v: Verdict) -> dict[str, Any]:
    ranks = None
    if v.ranks is not None:
        ranks = {"expected": v.ranks.expected, "present": list(v.ranks.present),
                 "missing": list(v.ranks.missing), "source": v.ranks.source or None}
    return {"path": v.path, "path_b64": path_b64(v.path), "step": v.step, "layout": v.layout,
            "status": v.status.value, "ranks": ranks,
            "problems": [problem_json(p) for p in v.problems], "hazards": [hazard_json(h) for h in v.hazards],
            "newest_mtime": v.newest_mtime, "bytes": v.bytes}


def run_json(r: RunReport, retention: dict[str, Any] | None = None,
             mirror: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"root": r.root, "root_b64": path_b64(r.root), "layout": r.layout,
           "latest_resumable": r.latest_resumable,
           "checkpoints": [verdict_json(v) for v in r.checkpoints],
           "problems": [problem_json(p) for p in r.problems], "hazards": [hazard_json(h) for h in r.hazards],
           "resume_skipped": [{"path": v.path, "reason": why} for v, why in skipped_newer(r)]}
    if r.loss is not None:
        out["loss"] = r.loss.to_json()
    if retention is not None:
        out["retention"] = retention
    if mirror is not None:
        out["mirror"] = mirror
    return out


def to_json(reports: list[RootReport], retention: dict[str, dict[str, Any]] | None = None,
            mirror: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``retention``: run root -> its plan's JSON (``retention.execute.plan_json``) for runs with one;
    ``mirror``: run root -> its mirror status (``mirror.status.run_status``) likewise."""
    plans, mirrors = retention or {}, mirror or {}
    return {"version": JSON_VERSION,
            "runs": [run_json(r, plans.get(r.root), mirrors.get(r.root)) for rr in reports for r in rr.runs],
            "problems": [problem_json(p) for rr in reports for p in rr.problems]}


def write_json(reports: list[RootReport], out: TextIO = sys.stdout, *,
               retention: dict[str, dict[str, Any]] | None = None,
               mirror: dict[str, dict[str, Any]] | None = None) -> None:
    out.write(json.dumps(to_json(reports, retention, mirror)))  # one line: the C encoder (indent= is Python)
    out.write("\n")


_COLOURS = {Status.COMPLETE: "32", Status.INCOMPLETE: "31", Status.CORRUPT: "31;1", Status.IN_PROGRESS: "33"}


def _status(v: Verdict, colour: bool) -> str:
    text = v.status.value
    return f"\x1b[{_COLOURS[v.status]}m{text}\x1b[0m" if colour else text


def write_table(reports: list[RootReport], out: TextIO = sys.stdout, *, colour: bool | None = None) -> None:
    """One block per run: a line per checkpoint, then every problem and hazard spelled out (paths and
    messages through ``for_terminal``: a name with a newline must not split or forge a line)."""
    if colour is None:
        colour = out.isatty()
    runs = [r for rr in reports for r in rr.runs]
    if not runs:
        out.write("no checkpoints found\n")
    for r in runs:
        out.write(f"\n{for_terminal(r.root)}  [{r.layout}]  {len(r.checkpoints)} checkpoints\n")
        width = max((len(_short(v.path, r.root)) for v in r.checkpoints), default=10)
        for v in r.checkpoints:
            ranks = ""
            if v.ranks and v.ranks.expected and (v.ranks.expected > 1 or v.ranks.missing):
                ranks = f"ranks {len(v.ranks.present)}/{v.ranks.expected}"
            flag = "  <- resume here" if v.path == r.latest_resumable else ""
            step = "" if v.step is None else str(v.step)
            out.write(f"  {_short(v.path, r.root):<{width}}  step {step:>8}  {_status(v, colour):<11}  "
                      f"{ranks}{flag}\n")
            _write_findings(out, "      ", v.problems, v.hazards)
        _write_findings(out, "  ", r.problems, r.hazards, problem_label="run ")
        latest = r.latest_resumable or ("none: every complete checkpoint has a resume hazard that blocks it"
                                        if r.newest_complete else "none: no complete checkpoint")
        out.write(f"  newest resumable: {for_terminal(latest)}\n")
        for v, why in skipped_newer(r):
            if v.status is Status.COMPLETE:
                out.write(f"  skipped {_short(v.path, r.root)}: {why}\n")
        if r.loss is not None:
            for res in r.loss.resumes:
                flag = "LOSS JUMP" if res.alert else "resume"
                out.write(f"  {flag} at step {res.at_step}: {res.reason}\n")
    for rr in reports:
        for p in rr.problems:
            out.write(f"{p.kind}: {for_terminal(full_message(p))}\n")


def _write_findings(out: TextIO, indent: str, problems: tuple[Problem, ...], hazards: tuple[Hazard, ...],
                    problem_label: str = "") -> None:
    """Each finding on a line (what, where), then each distinct piece of advice once (what to do)."""
    for p in problems:
        out.write(f"{indent}{problem_label}{p.kind}: {for_terminal(p.message)}\n")
    for h in hazards:
        out.write(f"{indent}HAZARD {h.kind}: {for_terminal(h.message)}\n")
    for advice in dict.fromkeys(advice_for(x.kind) for x in [*problems, *hazards]):
        if advice:
            out.write(f"{indent}-> {advice}\n")


def _short(path: str, root: str) -> str:
    """A checkpoint as the table names it: relative to its run, control characters escaped."""
    return for_terminal(path[len(root) + 1:] if path.startswith(root + "/") else path)
