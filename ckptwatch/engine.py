"""The one place that sequences discovery, validation and the generic verdict rules.

``ckptwatch once``, ``verify`` and ``latest`` call ``check_root``; the service calls the
same function for each run whose writes settled, so both drivers give the same verdicts (STYLE.md
convention 6). ``now`` is a parameter: nothing below reads the clock.

Generic rules applied here, identically for every layout:
- settle: anything modified within ``settle_seconds`` is ``in_progress`` and its other findings are
  withheld (a file being written looks truncated; DESIGN.md invariant 2);
- a temp/staging marker untouched for ``stale_after`` becomes ``abandoned_temp`` (a killed save);
- expected ranks: the checkpoint's own metadata, else the widest sibling in the run, else config;
  each missing rank is a ``missing_rank`` problem (MindSpore's rule, generalised);
- the newest resumable checkpoint is the newest ``complete`` one.
"""

from __future__ import annotations

import collections
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from ckptwatch import packed
from ckptwatch.discover import discover
from ckptwatch.formats._io import confined_to
from ckptwatch.formats.limits import KIND as EXCEEDS_LIMITS
from ckptwatch.formats.limits import limits_in_force
from ckptwatch.hazards import CheckpointFacts, checkpoint_hazards, run_hazards
from ckptwatch.layouts.base import Candidate, CheckOptions, Judgement, RankFile, RunFound
from ckptwatch.model import Hazard, Problem, Ranks, RunReport, Severity, Status, Verdict
from ckptwatch.resume import resume_choice, run_report
from ckptwatch.scan import TreeStat, display, quick_digest, tree
from ckptwatch.settle import Settle, is_abandoned, settle_state
from ckptwatch.vocabulary import severity_of, status_from


@dataclass
class RootReport:
    root: str
    runs: list[RunReport]  # with check_root(stream=True): an iterator, judged as it is taken
    problems: list[Problem]
    live: frozenset[str] | None = None  # every run's root as its RunReport names it, known before judging


class Cached:
    """One checkpoint's entry in the judgement cache: a small record, never a listing of its files.

    ``fingerprint`` is the 64-bit ``TreeStat.digest`` the judgement was made on. ``keep`` stores the last
    verdict built from this judgement when no time rule could change it (a settled checkpoint with no
    transient finding), with ``key``, a hash of the run-level inputs it was built from. A rescan that finds
    the same fingerprint and key, still settled, reuses it as it is (``kept``).

    In a big cache a kept entry is held packed (``packed``, ``PACK_ABOVE``): the service keeps one for every
    settled checkpoint of every root, and as objects they cost ~4.5 KB each. Packed, the parts checkpoints
    share (their findings with the path taken out, ranks, weights files) are held once, ~570 bytes a
    checkpoint in all; ``judgement()`` and ``kept()`` decode a copy (~18 us a checkpoint at each rescan).

    ``quick`` is ``TreeStat.quick`` of a look with this fingerprint (None: the checkpoint holds a link or a
    finding, or is a file): while a verdict is kept, a rescan re-checks the checkpoint with
    ``scan.quick_digest`` alone, and walks it in full only when that differs.
    """

    __slots__ = ("fingerprint", "quick", "key", "path", "_judgement", "_kept", "_numbers")

    def __init__(self, fingerprint: int, judgement: Judgement, quick: int | None, path: str) -> None:
        self.fingerprint = fingerprint
        self.quick = quick
        self.key: int | None = None  # hash of the run-level inputs of the kept verdict (None: none kept)
        self.path = path  # the checkpoint (the cache's key): what packed strings stand in for
        self._judgement: Any = judgement  # a Judgement, or its packed form (a tuple)
        self._kept: Any = None  # None, [verdict, facts], or the verdict's packed form (a tuple)
        self._numbers: bytes | None = None  # the packed verdict's own step, newest_mtime and bytes

    def judgement(self) -> Judgement:
        j = self._judgement
        return packed.decode(j, self.path) if type(j) is tuple else j

    def kept(self, key: int, judgement: Judgement) -> tuple[Verdict, CheckpointFacts] | None:
        """The verdict kept for these run-level inputs and its hazard facts, which ``judgement`` (this
        entry's) gives again (None: none kept, or for other inputs)."""
        if self.key != key or self._kept is None:
            return None
        k = self._kept
        if type(k) is list:  # kept as objects
            return k[0], k[1]
        if self._numbers is None:
            verdict = packed.decode(k, self.path)
        else:
            # path, step, layout, status, ranks, problems, hazards, newest_mtime, bytes (Verdict's fields)
            fields = packed.decode_fields(k, self.path)
            mtime, size, step, has_step = _VERDICT_NUMBERS.unpack(self._numbers)
            fields[1], fields[7], fields[8] = step if has_step else None, mtime, size
            verdict = Verdict(*fields)
        return verdict, hazard_facts(self.path, verdict.step, judgement)

    def judgement_for_kept(self) -> Judgement:
        """This entry's judgement without its problems, for a rescan that reuses the kept verdict: the run's
        widest ranks and the hazard facts are all that reuse reads (the problems are in the verdict).
        A caller that cannot reuse the verdict must judge with ``judgement()`` (the engine does: it
        judges the run again without the quick path)."""
        j = self._judgement
        if type(j) is not tuple:
            return j
        return Judgement([], *packed.decode_fields(j, self.path, start=2))

    def keep(self, key: int, verdict: Verdict, facts: CheckpointFacts, pack: bool = True) -> None:
        """Keep ``verdict`` (and its hazard facts) for these run-level inputs, packed or (``pack`` False) as
        they are. Packed, a verdict's own numbers (step, newest write, size) go to 25 bytes and the rest is
        packed without them: the checkpoints of a run, which differ in little else, then share one packed
        verdict; the facts are not kept (``kept`` builds them again from the judgement)."""
        self.key = key
        if not pack:
            self._kept, self._numbers = [verdict, facts], None
            return
        numbers = None
        if (type(verdict.newest_mtime) is float and type(verdict.bytes) is int
                and (verdict.step is None or type(verdict.step) is int)):
            try:
                numbers = _VERDICT_NUMBERS.pack(verdict.newest_mtime, verdict.bytes, verdict.step or 0,
                                                verdict.step is not None)
            except struct.error:  # out of range: kept in the packed verdict itself
                numbers = None
        try:
            if type(self._judgement) is not tuple:
                self._judgement = packed.encode(self._judgement, self.path)
            shared = verdict if numbers is None else replace(verdict, step=None, newest_mtime=0.0, bytes=0)
            self._kept, self._numbers = packed.encode(shared, self.path), numbers
        except packed.Unpackable:  # kept as objects: correct, only larger
            self._judgement, self._kept, self._numbers = self.judgement(), [verdict, facts], None

    def pack(self) -> None:
        """Pack a verdict kept as objects (the cache grew past ``PACK_ABOVE``)."""
        if type(self._kept) is list and self.key is not None:
            self.keep(self.key, *self._kept)

    def forget_kept(self) -> None:
        self.key, self._kept, self._numbers = None, None, None


_VERDICT_NUMBERS = struct.Struct("<dQq?")  # newest_mtime, bytes, step, whether there is a step


def hazard_facts(path: str, step: int | None, j: Judgement) -> CheckpointFacts:
    """What the hazard rules need of one checkpoint: from its judgement (adapters, weights files)."""
    return CheckpointFacts(path, step, j.facts.get("adapters") or {}, j.facts.get("full_weights") or [])


JudgementCache = dict  # checkpoint path -> Cached; owned by one caller

# Kept verdicts are packed once a root's cache holds more checkpoints than this. Below, they stay objects:
# at most ~90 MiB, and a rescan reuses them as they are (the warm rescan of 10,000 checkpoints is ~2.4x
# `find`, and decoding each would add ~0.18 s to its 0.57 s). Above, memory is what runs out first: at
# 100,000 checkpoints the objects were ~450 MiB; packed they are ~57 MiB, and a rescan pays ~2 s more
# (issue 13, bench/README.md section 10).
PACK_ABOVE = 20_000


def check_root(root: str, opts: CheckOptions, now: float, *, layout: str = "auto",
               cache: JudgementCache | None = None, loss: Any = None, stream: bool = False) -> RootReport:
    """Every run below ``root``, judged.

    ``cache`` (the service's, one per root): a checkpoint whose files (paths, sizes, mtimes, modes)
    are unchanged since the last pass reuses its layout judgement, so an event or a rescan of a root
    with thousands of checkpoints costs a listing and a stat per file, not a re-read of every header.
    The time rules (settle, stale markers), ranks and hazards are still applied afresh.

    ``stream`` (the service's whole-root pass): ``runs`` is an iterator that judges each run as it is
    taken, and ``live`` names them all up front. Why: at 10,000 runs, holding every run's verdicts at
    once cost the service ~150 MiB at each pass, and a process keeps the high-water mark of its heap.
    """
    found = discover(root, layout=layout)
    live = frozenset(display(run.root) for run in found.runs)
    runs: Any = _judged_runs(collections.deque(found.runs), opts, now, cache)
    if not stream:
        runs = list(runs)
        if loss is not None:
            memo: dict[str, Any] = {}
            runs = [with_loss(r, loss, memo) for r in runs]
    return RootReport(root, runs, found.problems, live)


def _judged_runs(runs: collections.deque[RunFound], opts: CheckOptions, now: float,
                 cache: JudgementCache | None) -> Iterator[RunReport]:
    """Each run judged in turn, its discovery (candidates) released once judged; at the end, the cache
    forgets checkpoints that are gone."""
    seen = {c.path for run in runs for c in run.candidates} if cache is not None else set()
    pack = len(seen) > PACK_ABOVE  # decided up front: a catch-up's first 20,000 are packed too
    while runs:
        yield _judge_run_guarded(runs.popleft(), opts, now, cache, pack)
    if cache is not None:
        for gone in [p for p in cache if p not in seen]:
            del cache[gone]
        if pack:
            for entry in cache.values():  # kept as objects while the cache was small (per-run passes)
                entry.pack()


def check_run_dir(run_root: str, opts: CheckOptions, now: float, *, layout: str = "auto",
                  cache: JudgementCache | None = None) -> list[RunReport] | None:
    """The runs found at ``run_root`` (one known run of a watched root), judged; None if it is no run now.

    The service's per-run pass: discovery starts at the run's own directory, which the layouts
    recognise exactly as they do when walking down from the watched root, so the verdicts are the
    same as a whole-root pass gives, at the cost of one run's listing. ``None`` (the run was deleted
    or no longer looks like one) tells the caller to fall back to the whole root.
    """
    found = discover(run_root, layout=layout)
    if not any(os.path.normpath(r.root) == os.path.normpath(run_root) for r in found.runs):
        return None
    reports = [_judge_run_guarded(run, opts, now, cache) for run in found.runs]
    if cache is not None:
        seen = {c.path for run in found.runs for c in run.candidates}
        base = run_root.rstrip(os.sep) + os.sep
        for gone in [p for p in cache if p.startswith(base) and p not in seen]:
            del cache[gone]
    return reports


def fault_problem(where: str, exc: Exception) -> Problem:
    """A fault of ckptwatch itself while judging ``where``, as a finding of that checkpoint or run.

    One bad checkpoint or run must never blind the others (DESIGN.md invariant 5): the fault is
    confined to what was being judged, and the message says where in our code it happened, since
    the traceback is not shown.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    at = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}" if tb is not None else ""
    detail = str(exc)[:300]
    return Problem("check_failed", display(where), f"ckptwatch failed while checking {display(where)}: "
                   f"{type(exc).__name__}{': ' + detail if detail else ''}{at}")


def _judge_run_guarded(run: RunFound, opts: CheckOptions, now: float,
                       cache: JudgementCache | None, pack: bool = False) -> RunReport:
    """``judge_run``, with a fault of ours becoming a finding of this run instead of failing the pass."""
    try:
        return judge_run(run, opts, now, cache=cache, pack=pack)
    except Exception as exc:  # see fault_problem
        if os.environ.get("CKPTWATCH_DEBUG"):
            raise
        return run_report(display(run.root), run.layout.name, (), (fault_problem(run.root, exc),))


def loss_root(run: RunReport) -> str:
    """Where a run's loss logs live: its root, except where the layout keeps checkpoints apart.

    Lightning writes checkpoints to ``.../checkpoints/`` and the CSV/TensorBoard logs beside that dir;
    with its default layout (``lightning_logs/version_N/checkpoints``) a resume starts ``version_N+1``,
    so the loss of all versions is read from ``lightning_logs`` to see the resume at all.
    """
    root = run.root
    if run.layout == "lightning" and os.path.basename(root.rstrip(os.sep)) == "checkpoints":
        root = os.path.dirname(root.rstrip(os.sep))
        if re.fullmatch(r"version_\d+", os.path.basename(root)):
            root = os.path.dirname(root)
    return root


def with_loss(run: RunReport, settings: Any, memo: dict[str, Any] | None = None) -> RunReport:
    """The run with its loss history judged (``once``): resumes and loss jumps, ``loss.resumes`` in JSON.

    The loss watch reads logs the trainer wrote, not checkpoints; a fault there (an unreadable events
    file) is a note in the loss report, never a reason to lose the checkpoint verdicts. ``memo``: runs
    that share a loss root (Lightning versions) share one analysis.
    """
    from ckptwatch.losswatch import analyse_run

    where = loss_root(run)
    if memo is not None and where in memo:
        return replace(run, loss=memo[where])
    try:
        with confined_to(where):
            report = analyse_run(where, settings, [(v.step, v.path) for v in run.checkpoints])
    except Exception as exc:  # noqa: BLE001 - see the docstring
        from ckptwatch.losswatch import LossReport

        report = LossReport(where, (), (), (), (f"loss watch failed: {type(exc).__name__}: {exc}",))
    if memo is not None:
        memo[where] = report
    return replace(run, loss=report)


TEMP_NAME = re.compile(r"^\.tmp[A-Za-z0-9_]{6,}\Z"
                       r"|^.+\.(safetensors|pt|pth|bin|ckpt|json)\.tmp[A-Za-z0-9_]*\Z")


def _stat_candidate(run: RunFound, cand: Candidate) -> TreeStat:
    if not cand.members:
        return tree(cand.path, run.root)
    parts = [tree(m, run.root) for m in cand.members]
    return TreeStat(tuple(f for p in parts for f in p.files), tuple(x for p in parts for x in p.problems),
                    max((p.newest_dir_mtime for p in parts), default=0.0))


def _temp_files(stat: TreeStat) -> list[Problem]:
    """Writer temp files (safetensors 0.8's ``.tmpXXXXXX``, ``name.json.tmp``...) mean a save in flight."""
    return [Problem("in_progress", display(e.path),
                    f"{display(e.path)} is a writer's temp file: a save is in progress (or was killed)")
            for e in stat.files if TEMP_NAME.match(e.name)]


def _fingerprint(stat: TreeStat) -> int:
    """What must be unchanged for an earlier judgement to still hold (and for two looks to agree)."""
    return stat.digest


def _judge_cached(run: RunFound, cand: Candidate, opts: CheckOptions, cache: JudgementCache,
                  quick: bool) -> tuple[Judgement, TreeStat | None, Cached | None]:
    """The judgement of ``cand``, from the cache when its files are unchanged; the look it was made on; the
    cache entry that holds it (None: judged afresh and not cached, e.g. a transient finding).

    With ``quick`` (the cached rescan), a checkpoint whose cache entry holds a kept verdict is re-checked
    with ``quick_digest`` only; when that matches, the stat is None: the caller reuses the kept verdict,
    or judges the run again without ``quick`` if it cannot.
    """
    hit = cache.get(cand.path)
    if (quick and hit is not None and hit.key is not None and hit.quick is not None
            and not cand.members and quick_digest(cand.path) == hit.quick):
        return hit.judgement_for_kept(), None, hit  # no stat: only a kept verdict may be used (_judge_run)
    stat = _stat_candidate(run, cand)
    fingerprint = _fingerprint(stat)  # a 64-bit hash (TreeStat.digest), never the listing itself
    if hit is not None and hit.fingerprint == fingerprint:
        hit.quick = stat.quick  # this look has the judged files too (its quick digest may be new)
        return hit.judgement(), stat, hit
    judgement, stat = _judge_look(run, cand, opts, stat)  # a changed second look is in_progress: not kept
    # A read stopped at a limit depends on the machine's load and on the limits (a reload may raise them):
    # it is judged again next time, like a transient finding.
    if any(severity_of(p.kind) is Severity.TRANSIENT or p.kind == EXCEEDS_LIMITS for p in judgement.problems):
        return judgement, stat, None
    entry = cache[cand.path] = Cached(fingerprint, judgement, None if cand.members else stat.quick,
                                      cand.path)
    return judgement, stat, entry


def _judge_candidate(run: RunFound, cand: Candidate, opts: CheckOptions) -> tuple[Judgement, TreeStat]:
    """The layout's judgement of ``cand`` and the look it was made on."""
    return _judge_look(run, cand, opts, _stat_candidate(run, cand))


def _judge_look(run: RunFound, cand: Candidate, opts: CheckOptions,
                stat: TreeStat) -> tuple[Judgement, TreeStat]:
    """The layout's judgement of ``cand`` on the look ``stat``, and the look it holds for (a second look
    that differs makes the checkpoint ``in_progress``, judged on that look)."""
    # Layouts that list every file reuse the listing instead of walking again; it is dropped right after,
    # so a pass never holds every file's entry of the root at once (memory, and the collector's work).
    cand.data["tree"] = stat
    try:
        with limits_in_force(opts.limits):
            judgement = run.layout.judge(cand, opts)
    except FileNotFoundError as exc:  # the whole checkpoint vanished between listing and judging
        judgement = Judgement([Problem("deleted", display(cand.path), f"{display(cand.path)} vanished during "
                                       f"the scan ({exc.strerror})")])
    except Exception as exc:  # one checkpoint's fault is its finding (fault_problem)
        if os.environ.get("CKPTWATCH_DEBUG"):
            raise
        judgement = Judgement([fault_problem(cand.path, exc)])
    finally:
        cand.data.pop("tree", None)
    if opts.second_look and not any(severity_of(p.kind) is Severity.TRANSIENT for p in judgement.problems):
        again = _stat_candidate(run, cand)
        if _fingerprint(again) != _fingerprint(stat):
            changed = _changed_files(stat, again)
            judgement = Judgement([Problem("in_progress", display(cand.path),
                                           f"{display(cand.path)} changed while it was being checked "
                                           f"({changed}): a save is still in progress")])
            stat = again
    return judgement, stat


def _changed_files(before: TreeStat, after: TreeStat) -> str:
    """A short account of what differs between two looks, for the in_progress message."""
    old = {e.path: (e.size, e.mtime, e.ino, e.ctime) for e in before.files}
    new = {e.path: (e.size, e.mtime, e.ino, e.ctime) for e in after.files}
    diff = sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))
    if not diff:
        return "a directory changed"
    names = ", ".join(display(p) for p in diff[:3])
    return names + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")


def _rank_facts(cand: Candidate, j: Judgement, widest: int,
                opts: CheckOptions) -> tuple[Ranks | None, list[Problem]]:
    if j.present_ranks is None:
        return None, []
    own = max(j.present_ranks) + 1 if j.present_ranks else 0
    if j.expected_ranks:
        expected, source = j.expected_ranks, "metadata"
    elif widest > own:
        expected, source = widest, "siblings"
    elif opts.expected_ranks:
        expected, source = opts.expected_ranks, "config"
    elif own:
        expected, source = own, "files"  # a lower bound: the highest rank that wrote anything
    else:
        expected, source = None, ""
    ranks = Ranks(expected, tuple(sorted(j.present_ranks)), source)
    describe = j.rank_file or RankFile("files of rank {r}")
    why = {"metadata": "as its own metadata records",
           "siblings": "as the widest checkpoint of this run has",
           "config": "as expected_ranks says",
           "files": "as the files present imply"}.get(source, "")
    problems = [Problem("missing_rank",
                        display(os.path.join(cand.path, describe(r))) if os.path.isdir(cand.path)
                        else display(cand.path),
                        f"{display(cand.path)}: rank {r} of {expected} ({why}) is missing: no {describe(r)}")
                for r in ranks.missing]
    return ranks, problems


def _apply_time_rules(cand: Candidate, problems: list[Problem], stat: TreeStat, opts: CheckOptions,
                      now: float) -> list[Problem]:
    out = []
    for p in problems:
        if p.kind == "in_progress" and p.file:
            try:
                mtime = os.stat(p.file).st_mtime
            except OSError:
                mtime = None
            if mtime is not None and is_abandoned(mtime, now, opts.stale_after):
                age = (now - mtime) / 60
                p = Problem("abandoned_temp", p.file, f"{p.message}; untouched for {age:.0f} min "
                            f"(stale_after {opts.stale_after / 60:.0f} min): the save was killed half-way")
        out.append(p)
    if stat.files or stat.newest_dir_mtime:
        if settle_state(stat.newest_mtime, now, opts.settle_seconds) is Settle.SETTLING:
            age = max(0.0, now - stat.newest_mtime)
            out.append(Problem("in_progress", display(cand.path),
                               f"{display(cand.path)} was modified {age:.0f} s "
                               f"ago (settle_seconds {opts.settle_seconds:g})"))
    if any(severity_of(p.kind) is Severity.TRANSIENT for p in out):
        # Unsettled: withhold the findings a half-written file would produce.
        out = [p for p in out if severity_of(p.kind) in (Severity.TRANSIENT, Severity.WARNING)]
    return out


def judge_run(run: RunFound, opts: CheckOptions, now: float, *, only: str | None = None,
              cache: JudgementCache | None = None, pack: bool = False) -> RunReport:
    """Judge every candidate of one run, then the run-level rules.

    ``only`` (``ckptwatch verify``): judge that candidate with ``opts``, and of its siblings only what
    its verdict needs, structurally: the previous checkpoint (hazards compare successive
    checkpoints) and, when its own metadata does not record the world size, all of them (ranks).
    The readers open nothing outside the run's directory (a symlink out of it is ``unsafe_path``).
    """
    with confined_to(run.root):
        return _judge_run(run, opts, now, only=only, cache=cache, pack=pack)


def _judge_run(run: RunFound, opts: CheckOptions, now: float, *, only: str | None,
               cache: JudgementCache | None, quick: bool = True, pack: bool = False) -> RunReport:
    cands = sorted(run.candidates, key=lambda c: c.sort_key())
    judged: list[tuple[Candidate, Judgement, TreeStat | None, Cached | None]]
    if cache is not None and only is None:
        judged = [(c, *_judge_cached(run, c, opts, cache, quick)) for c in cands]
    elif only is None:
        judged = [(*x, None) for x in _judge_all(run, cands, opts)]
    else:
        judged = [(*x, None) for x in _judge_for_one(run, cands, only, opts)]
    widest = max((j.expected_ranks or (max(j.present_ranks) + 1 if j.present_ranks else 0)
                  for _, j, _, _ in judged if j.present_ranks is not None), default=0)

    verdicts: list[Verdict] = []
    facts: list[CheckpointFacts] = []
    run_key = (widest, opts.expected_ranks, opts.settle_seconds, opts.stale_after)
    pack = pack or (cache is not None and len(cache) > PACK_ABOVE)
    for cand, j, stat, entry in judged:
        key = hash((*run_key, cand.step, cand.layout))
        kept = entry.kept(key, j) if entry is not None else None
        if kept is not None and settle_state(kept[0].newest_mtime, now,
                                             opts.settle_seconds) is Settle.SETTLED:
            # Same files (fingerprint), same judgement, same run-level inputs, still settled: the rules below
            # would build this very verdict again (the service's rescan, over every settled checkpoint).
            verdicts.append(kept[0])
            facts.append(kept[1])
            continue
        if stat is None:
            # Re-checked by the quick digest only, and its kept verdict does not fit any more (the run's
            # inputs changed): judge the whole run again the ordinary way, every checkpoint walked.
            return _judge_run(run, opts, now, only=only, cache=cache, quick=False, pack=pack)
        ranks, rank_problems = _rank_facts(cand, j, widest, opts)
        found = [*j.problems, *stat.problems, *_temp_files(stat), *rank_problems]
        problems = _apply_time_rules(cand, found, stat, opts, now)
        step = j.step if cand.step is None else cand.step
        cf = hazard_facts(cand.path, step, j)
        facts.append(cf)
        verdict = Verdict(display(cand.path), step, cand.layout, status_from(problems), ranks,
                          tuple(_dedupe(problems)), tuple(checkpoint_hazards(cf)), stat.newest_mtime,
                          sum(e.size for e in stat.files))
        verdicts.append(verdict)
        if entry is not None:
            # Reusable only when no time rule touched it: a transient finding (a temp file, a settle) or an
            # abandoned-temp check depends on ``now``; a settled checkpoint without them does not.
            timeless = not any(severity_of(p.kind) is Severity.TRANSIENT for p in found) and \
                problems == found
            if timeless:
                entry.keep(key, verdict, cf, pack)
            else:
                entry.forget_kept()

    across = run_hazards(facts)
    verdicts = [_with_hazards(v, across.get(f.path, [])) for v, f in zip(verdicts, facts)]
    choice = resume_choice(verdicts, allow_hazards=opts.allow_hazards)
    newest_complete, latest = choice.newest_complete, choice.newest_resumable
    run_problems, run_hazards_ = run.layout.run_findings(run, verdicts, latest)
    newest = verdicts[-1] if verdicts else None
    if newest is not None and newest.status in (Status.INCOMPLETE, Status.CORRUPT):
        use = f"resume from {latest.path}" if latest else "no complete checkpoint exists in this run"
        run_hazards_.append(Hazard("newest_not_resumable", newest.path,
                                   f"the newest checkpoint {newest.path} is {newest.status.value}; "
                                   f"a trainer that resumes from the highest step will fail or load garbage; "
                                   f"{use}"))
    return RunReport(display(run.root), run.layout.name, tuple(verdicts), newest_complete,
                     tuple(_dedupe([*run.problems, *run_problems])), tuple(run_hazards_),
                     newest_resumable=latest)


PARALLEL_MIN_CHECKPOINTS = 200  # below this, forking workers costs more than it saves
_FORK_JOB: tuple[RunFound, list[Candidate], CheckOptions] | None = None


def _judge_all(run: RunFound, cands: list[Candidate],
               opts: CheckOptions) -> list[tuple[Candidate, Judgement, TreeStat]]:
    """Judge every candidate; a run of hundreds of checkpoints is split over forked workers.

    Judging is CPU-bound Python (headers, directories, JSON), so threads would not help. Forking is
    done only from a single-threaded process (``once``, ``latest``): forking a threaded one can copy
    a lock held by another thread. Workers inherit the job through ``_FORK_JOB`` and return plain
    data (judgements and file listings), so nothing but results crosses the process boundary.
    """
    global _FORK_JOB
    workers = min(os.cpu_count() or 1, 4)
    if len(cands) < PARALLEL_MIN_CHECKPOINTS or workers < 2:
        return [(c, *_judge_candidate(run, c, opts)) for c in cands]
    import threading  # here, not at the top: `latest` on a small run does not need it

    if threading.active_count() > 1:
        return [(c, *_judge_candidate(run, c, opts)) for c in cands]
    import multiprocessing  # 14 ms of start-up that small runs and `verify` do not need

    if "fork" not in multiprocessing.get_all_start_methods():
        return [(c, *_judge_candidate(run, c, opts)) for c in cands]
    chunks = [list(range(i, len(cands), workers * 4)) for i in range(workers * 4)]
    _FORK_JOB = (run, cands, opts)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_judge_indices, chunks)
    finally:
        _FORK_JOB = None
    by_index = {i: (j, stat) for part in parts for i, j, stat in part}
    return [(c, *by_index[i]) for i, c in enumerate(cands)]


def _judge_indices(indices: list[int]) -> list[tuple[int, Judgement, TreeStat]]:
    assert _FORK_JOB is not None
    run, cands, opts = _FORK_JOB
    out = []
    for i in indices:
        j, stat = _judge_candidate(run, cands[i], opts)
        out.append((i, j, stat))
    return out


def _judge_for_one(run: RunFound, cands: list[Candidate], only: str,
                   opts: CheckOptions) -> list[tuple[Candidate, Judgement, TreeStat]]:
    index = next(i for i, c in enumerate(cands) if os.path.normpath(c.path) == os.path.normpath(only))
    target = (cands[index], *_judge_candidate(run, cands[index], opts))
    shallow = replace(opts, deep=False, scan_values=False)
    needs_siblings = target[1].present_ranks is not None and not target[1].expected_ranks
    keep = range(len(cands)) if needs_siblings else [i for i in (index - 1,) if i >= 0]
    judged = {index: target}
    for i in keep:
        if i != index:
            judged[i] = (cands[i], *_judge_candidate(run, cands[i], shallow))
    return [judged[i] for i in sorted(judged)]


def _with_hazards(v: Verdict, extra: list[Hazard]) -> Verdict:
    if not extra:
        return v
    return replace(v, hazards=(*v.hazards, *extra))


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for p in problems:
        key = (p.kind, p.file, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def has_problems(reports: list[RootReport]) -> bool:
    """Exit-code rule of ``once``: any incomplete/corrupt checkpoint, hazard, or non-warning run finding."""
    for rr in reports:
        if any(severity_of(p.kind) is not Severity.WARNING for p in rr.problems):
            return True
        for run in rr.runs:
            if run.hazards or any(severity_of(p.kind) is not Severity.WARNING for p in run.problems):
                return True
            for v in run.checkpoints:
                if v.status in (Status.INCOMPLETE, Status.CORRUPT) or v.hazards:
                    return True
            if run.loss is not None and run.loss.alert:
                return True
    return False
