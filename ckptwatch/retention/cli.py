"""``ckptwatch prune PATH [--dry-run] [--json] [--keep-last N] ...`` or ``--config FILE``.

The same plan and the same guarded deletion path as the service (``retention.execute``): every
checkpoint with keep or delete, its reasons and the bytes freed; without ``--dry-run`` the deletions are
carried out after a fresh re-check of each run. Exit 0: done (or nothing to do); 1: a run's plan was
blocked or a deletion refused (nothing of that run deleted); 2: usage or config error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ckptwatch.errors import EXIT_OK, EXIT_PROBLEMS, ConfigError, UsageError

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig
    from ckptwatch.config.retention import RetentionConfig

# flag -> RetentionConfig key (each flag replaces the config's value of that key)
FLAGS = {"keep_last": "keep_last", "keep_every_steps": "keep_every_steps", "keep_best": "keep_best",
         "metric": "metric", "mode": "mode", "keep_within": "keep_within", "keep_interval": "keep_interval",
         "delete_incomplete_after": "delete_incomplete_after", "min_free": "min_free"}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    from ckptwatch.cliargs import add_check_args, duration, positive_int

    p = subparsers.add_parser("prune", help="plan retention for the runs at PATH and delete what it allows")
    p.add_argument("path", nargs="?", metavar="PATH", help="an output dir (default: every [[watch]] with "
                   "[watch.retention] in --config)")
    p.add_argument("--config", metavar="FILE", help="read [watch.retention] from the watch holding PATH")
    p.add_argument("--dry-run", action="store_true", help="print the plan; delete nothing")
    p.add_argument("--keep-last", type=positive_int, metavar="N", help="keep the newest N complete")
    p.add_argument("--keep-every-steps", type=positive_int, metavar="K", help="keep steps divisible by K")
    p.add_argument("--keep-best", type=positive_int, metavar="M", help="keep the M best by --metric")
    p.add_argument("--metric", metavar="NAME", help="e.g. eval_loss (what --keep-best ranks by)")
    p.add_argument("--mode", choices=("min", "max"), help="min (default): lower is better")
    p.add_argument("--keep-within", type=duration, metavar="DURATION", help="keep everything younger")
    p.add_argument("--keep-interval", type=duration, metavar="DURATION", help="keep one per interval")
    p.add_argument("--delete-incomplete-after", type=duration, metavar="DURATION",
                   help="delete crashed saves older than this when a newer checkpoint is complete")
    p.add_argument("--min-free", metavar="SIZE|PCT", help='free space to keep, e.g. "50G" or "10%%"')
    add_check_args(p)
    return p


def _policy(args: argparse.Namespace, base: RetentionConfig | None) -> RetentionConfig:
    from ckptwatch.config.reader import Location
    from ckptwatch.config.retention import FreeSpaceKind, RetentionConfig

    values: dict[str, Any] = {key: getattr(args, flag) for flag, key in FLAGS.items()
                              if getattr(args, flag) is not None}
    if "min_free" in values:
        try:
            values["min_free"] = FreeSpaceKind().read(values["min_free"],
                                                      Location("command line", "min_free"))
        except ConfigError as exc:
            raise UsageError(f"--min-free: {exc}") from None
    if base is None and not values:
        raise UsageError("prune needs a policy: --config FILE with [watch.retention], or flags such as "
                         "--keep-last 3")
    import dataclasses

    policy = dataclasses.replace(base or RetentionConfig(keep_last=None), **values)
    try:
        return policy.checked(Location("command line"))
    except ConfigError as exc:
        raise UsageError(str(exc).replace("command line: ", "")) from None


def _targets(args: argparse.Namespace) -> list[tuple[WatchConfig, RetentionConfig]]:
    from ckptwatch.config import WatchConfig, load_config

    config = load_config(args.config) if args.config else None
    if args.path is None:
        if config is None:
            raise UsageError("prune needs a PATH (or --config FILE with [[watch]] paths)")
        watches = [w for w in config.watches if w.retention is not None]
        if not watches and not any(getattr(args, f) is not None for f in FLAGS):
            raise UsageError(f"{args.config}: no [[watch]] has a [watch.retention] table")
        return [(w, _policy(args, w.retention)) for w in watches or config.watches]
    path = os.path.abspath(args.path)
    if not os.path.isdir(path):
        raise UsageError(f"{args.path}: not a directory")
    holder = None
    if config is not None:
        holder = next((w for w in config.watches
                       if path == w.path or path.startswith(w.path.rstrip("/") + "/")), None)
    watch = holder or WatchConfig(path=path, layout=args.layout, expected_ranks=args.expected_ranks)
    return [(watch, _policy(args, holder.retention if holder else None))]


def cmd_prune(args: argparse.Namespace) -> int:
    from ckptwatch.cliargs import check_options
    from ckptwatch.engine import check_root, check_run_dir
    from ckptwatch.mirror.service import mirrored_check
    from ckptwatch.retention import execute

    now = time.time()
    blocked_or_refused = False
    out_runs: list[dict[str, Any]] = []
    for watch, policy in _targets(args):
        opts = check_options(args, None, watch)
        root_report = check_root(watch.path, opts, now, layout=watch.layout)
        recovered = [line for run in root_report.runs for line in execute.recover_run(run)]
        for line in recovered:
            print(f"ckptwatch: {line}", file=sys.stderr)
        if recovered:  # a crash interrupted a deletion: judge the run as the recovery left it
            root_report = check_root(watch.path, opts, now, layout=watch.layout)
        for run in root_report.runs:
            mirrored = mirrored_check(watch.mirror, run.root)  # nothing unmirrored is deleted
            run_plan = execute.plan_for(run, policy, watch.path, now, mirrored=mirrored)
            item = {"root": run.root, "retention": execute.plan_json(run_plan, dry_run=args.dry_run),
                    "outcomes": []}
            blocked_or_refused |= bool(run_plan.blocked)
            if not args.dry_run:
                def rejudge(root: str = run.root) -> Any:
                    runs = check_run_dir(root, opts, time.time(), layout=watch.layout)
                    same = os.path.normpath(root)
                    return next((r for r in runs or () if os.path.normpath(r.root) == same), None)

                outcomes = execute.prune(run_plan, policy, watch.path, now, rejudge, mirrored=mirrored)
                item["outcomes"] = [{"path": o.path, "result": o.result, "bytes": o.bytes, "reason": o.reason}
                                    for o in outcomes]
                blocked_or_refused |= any(o.result == "refused" for o in outcomes)
            if not args.json:
                _write_run(run_plan, item["outcomes"], args.dry_run)
            out_runs.append(item)
    if args.json:
        json.dump({"version": 1, "runs": out_runs}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return EXIT_PROBLEMS if blocked_or_refused else EXIT_OK


def _printable(path: str) -> str:
    """A path for a terminal: undecodable bytes and control characters (a newline in a name) escaped."""
    from ckptwatch.formats._io import display

    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in display(path))


def _size(n: int) -> str:
    from ckptwatch.alerts.messages import human_bytes

    return human_bytes(n)


def _write_run(run_plan: Any, outcomes: list[dict[str, Any]], dry_run: bool) -> None:
    plan = run_plan.plan
    print(f"\n{_printable(run_plan.run)}  {len(plan.decisions)} checkpoints")
    done = {o["path"]: o for o in outcomes}
    for d in plan.decisions:
        inside = d.path.startswith(run_plan.run)
        name = _printable(os.path.relpath(d.path, run_plan.run) if inside else d.path)
        verb = "keep  " if d.keep else ("delete" if dry_run else done.get(d.path, {}).get("result", "delete"))
        step = "" if d.step is None else str(d.step)
        print(f"  {verb:<8} {name:<28} step {step:>8}  {_size(d.bytes):>9}  {'; '.join(d.reasons)}")
        if not d.keep and not dry_run and d.path in done and done[d.path]["result"] != "deleted":
            print(f"           {done[d.path]['reason']}")
    freed = sum(o["bytes"] for o in outcomes if o["result"] == "deleted")
    if run_plan.blocked:
        print("  nothing deleted: " + "; ".join(run_plan.blocked))
    elif dry_run:
        print(f"  would free {_size(plan.bytes_freed)} (dry run: nothing deleted)")
    else:
        print(f"  freed {_size(freed)}")
    if plan.shortfall:
        print(f"  min_free cannot be met: {_size(plan.shortfall)} short; everything left is protected or "
              "kept")
