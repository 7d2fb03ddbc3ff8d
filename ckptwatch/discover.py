"""Find the training runs under a root: which directories hold checkpoints, and of which layout.

The walker asks each layout, in registry order, whether a directory is one of its run roots; the
first that says yes owns it, and the checkpoint directories it claims are not descended into. Other
sub-directories are still walked, so a dir of many runs (``/data/runs/*``) works. Symlinked
directories are never followed: a link inside the root would judge the same checkpoint twice, a link
outside it leaves the watched tree, and a loop would never end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ckptwatch.layouts import registry
from ckptwatch.layouts.base import Layout, RunFound, listing_memo
from ckptwatch.model import Problem
from ckptwatch.scan import display, inside, list_dir

MAX_DEPTH = 12  # deeper than any real output tree; stops pathological nesting


@dataclass
class Discovery:
    runs: list[RunFound] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # findings outside any run


def discover(root: str, *, layout: str = "auto", max_depth: int = MAX_DEPTH) -> Discovery:
    """Every run below ``root`` (``root`` itself included), down to ``max_depth`` levels (0: root only)."""
    with listing_memo():
        return _discover(root, registry.layouts(layout), max_depth)


def _discover(root: str, layouts: list[Layout], max_depth: int) -> Discovery:
    found = Discovery()
    stack: list[tuple[str, int]] = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        entries, problems = list_dir(directory)
        found.problems.extend(problems)
        consumed: set[str] = set()
        for lay in layouts:
            run = lay.find(directory, entries)
            if run is not None:
                found.runs.append(run)
                consumed |= run.consumed
                break
        if depth >= max_depth:
            continue
        for e in reversed(entries):
            if not e.is_dir or e.path in consumed:
                continue
            if e.is_symlink:
                if not inside(e.path, root):
                    found.problems.append(Problem("symlink_outside_root", display(e.path),
                                                  f"{display(e.path)} points outside {display(root)} "
                                                  f"(to {display(os.path.realpath(e.path))}); not followed"))
                continue
            stack.append((e.path, depth + 1))
    found.runs.sort(key=lambda r: r.root)
    # A finding inside a run belongs to that run's report.
    outside = []
    for p in found.problems:
        owner = max((r for r in found.runs if p.file.startswith(display(r.root) + os.sep)),
                    key=lambda r: len(r.root), default=None)
        (owner.problems if owner else outside).append(p)
    found.problems = outside
    return found
