"""One pass of the service: the engine over a watched root or one of its runs, with the service's memory.

The engine is injected (``Engine``), so tests drive the daemon with a fake or failing engine without
patching module globals. What this adds to the engine is what only a long-running process has: a
judgement cache per root (unchanged checkpoints are not re-read), the index of each root's runs (so an
event is placed in its run), and the open-files rule (a checkpoint some process still holds open for
writing has not settled), which is looked up only when a verdict is about to change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ckptwatch.formats.limits import limits_of
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import Problem, RunReport, Status, Verdict
from ckptwatch.resume import with_checkpoints

if TYPE_CHECKING:
    from ckptwatch.config import ServiceConfig, WatchConfig
    from ckptwatch.engine import RootReport


@dataclass(frozen=True)
class Engine:
    """The two engine entry points the service uses; the defaults are ``ckptwatch.engine``'s."""

    check_root: Callable[..., RootReport]
    check_run_dir: Callable[..., list[RunReport] | None]
    open_for_writing: Callable[[list[str]], dict[str, str]]

    @classmethod
    def default(cls) -> Engine:
        from ckptwatch.engine import check_root, check_run_dir
        from ckptwatch.writers import open_for_writing

        return cls(check_root, check_run_dir, open_for_writing)


@dataclass(frozen=True)
class PassResult:
    runs: Iterable[RunReport]  # taken once: a whole-root pass judges each run as it is taken
    whole: bool  # a whole-root pass: ``live`` is every run the root holds now
    live: frozenset[str] = frozenset()


@dataclass
class Judge:
    engine: Engine
    service: ServiceConfig
    changed_paths: Callable[[list[Verdict]], set[str]]  # the state store's "would this verdict be new?"
    caches: dict[str, dict] = field(default_factory=dict)  # per watched root: the engine's judgement cache
    run_index: dict[str, frozenset[str]] = field(default_factory=dict)  # watched root -> its runs

    def judge(self, watch: WatchConfig, scope: str | None, now: float) -> PassResult:
        """Judge the run ``scope`` or, when it is the root, unknown or no run any more, the whole root."""
        opts = CheckOptions(settle_seconds=self.service.settle_seconds, stale_after=self.service.stale_after,
                            expected_ranks=watch.expected_ranks, second_look=True,
                            limits=limits_of(self.service))
        cache = self.caches.setdefault(watch.path, {})
        runs = None
        if scope and scope != watch.path:
            runs = self.engine.check_run_dir(scope, opts, now, layout=watch.layout, cache=cache)
        whole = runs is None
        if whole:
            report = self.engine.check_root(watch.path, opts, now, layout=watch.layout, cache=cache,
                                            stream=True)
            runs = report.runs  # judged one at a time as the daemon delivers them (see check_root)
            if report.live is None:  # an engine that does not stream (a test's)
                runs = list(runs)
            live = frozenset(r.root for r in runs) if report.live is None else report.live
            self.run_index[watch.path] = live
        return PassResult(self._open_files_rule(watch.path, runs), whole,
                          self.run_index[watch.path] if whole else frozenset())

    def fresh_run(self, watch: WatchConfig, run_root: str, now: float) -> RunReport | None:
        """``run_root`` listed and judged from the disk with no cache, files held open for writing counted
        as in progress (None: no run there now). Safe on another thread: it touches no shared memory.
        Retention re-checks with it right before deleting (a plan's memory is not enough)."""
        opts = CheckOptions(settle_seconds=self.service.settle_seconds, stale_after=self.service.stale_after,
                            expected_ranks=watch.expected_ranks, second_look=True,
                            limits=limits_of(self.service))
        runs = self.engine.check_run_dir(run_root, opts, now, layout=watch.layout)
        run = next((r for r in runs or () if os.path.normpath(r.root) == os.path.normpath(run_root)), None)
        if run is None:
            return None
        held = held_open_is_in_progress(list(run.checkpoints), self.engine.open_for_writing([run_root]))
        return with_checkpoints(run, tuple(held)) if held != list(run.checkpoints) else run

    def _open_files_rule(self, root: str, runs: Iterable[RunReport]) -> Iterator[RunReport]:
        writing: dict[str, str] | None = None  # the open-files sweep, at most once per pass
        for run in runs:
            about_to_change = self.changed_paths(list(run.checkpoints))
            if any(v.path in about_to_change and v.status is not Status.IN_PROGRESS for v in run.checkpoints):
                if writing is None:
                    writing = self.engine.open_for_writing([root])
                held = held_open_is_in_progress(list(run.checkpoints), writing)
                if held != list(run.checkpoints):
                    run = with_checkpoints(run, tuple(held))
            yield run

    def forget_root(self, root: str) -> None:
        self.caches.pop(root, None)
        self.run_index.pop(root, None)


def settled_at(run: RunReport, settle_seconds: float, now: float) -> float | None:
    """When to judge ``run`` again so its in-progress checkpoints are seen settled (None: none is)."""
    settling = [v for v in run.checkpoints if v.status is Status.IN_PROGRESS]
    if not settling:
        return None
    return min(v.newest_mtime + settle_seconds + 0.05 if v.newest_mtime + settle_seconds > now
               else now + max(settle_seconds, 1.0) for v in settling)


def held_open_is_in_progress(verdicts: list[Verdict], writing: dict[str, str]) -> list[Verdict]:
    """A checkpoint with a file some process still holds open for writing has not settled."""
    if not writing:
        return verdicts
    out = []
    for v in verdicts:
        base = os.path.realpath(v.path).rstrip(os.sep) + os.sep
        held = sorted(p for p in writing if p.startswith(base) or p == os.path.realpath(v.path))
        if held and v.status is not Status.IN_PROGRESS:
            v = replace(v, status=Status.IN_PROGRESS, problems=tuple(
                Problem("in_progress", p, f"{p} is open for writing by {writing[p]}") for p in held))
        out.append(v)
    return out
