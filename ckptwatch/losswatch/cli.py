"""``ckptwatch loss PATH [--plot FILE.png] [--json] [--metric NAME]``: one run's loss, its resumes and
the verdict. Exit 0: no loss jump; 1: a jump (or a non-finite loss) after a resume; 2: usage error.

``add_parser(subparsers)`` registers the command on ckptwatch's parser and ``cmd_loss(args)`` runs it;
``python -m ckptwatch.losswatch.cli loss PATH`` runs it on its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ckptwatch.errors import EXIT_OK, CkptwatchError, UsageError
from ckptwatch.errors import EXIT_PROBLEMS as EXIT_JUMP

if TYPE_CHECKING:
    from ckptwatch.losswatch.report import LossReport
    from ckptwatch.losswatch.settings import LossSettings


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    from ckptwatch.config.loss import LossSettings

    defaults = LossSettings()  # the one home of the defaults the help states
    p = subparsers.add_parser("loss", help="find resumes in a run's loss history and judge each (loss jump?)")
    p.add_argument("path", metavar="PATH",
                   help="a run dir (or one loss file: events, metrics.csv, .jsonl, log)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the loss history with resumes marked")
    p.add_argument("--json", action="store_true", help='print {"version": 1, "root": ..., "loss": {...}}')
    p.add_argument("--metric", action="append", metavar="NAME",
                   help=f"loss name in structured sources "
                        f"(repeatable; default: {', '.join(defaults.metric)})")
    p.add_argument("--regex", metavar="REGEX",
                   help="extra text-log pattern with groups (?P<loss>...) [(?P<step>...)]")
    p.add_argument("--jump-ratio", type=float, metavar="R",
                   help=f"alert when after/before >= R (default {defaults.jump_ratio:g})")
    p.add_argument("--window", type=int, metavar="K",
                   help=f"losses in each median (default {defaults.window})")
    p.set_defaults(func=cmd_loss)
    return p


def _settings(args: argparse.Namespace) -> LossSettings:
    from ckptwatch.errors import ConfigError
    from ckptwatch.losswatch.settings import parse_loss_settings

    raw: dict = {}
    if args.metric:
        raw["metric"] = list(args.metric)
    if args.regex:
        raw["regex"] = args.regex
    if args.jump_ratio is not None:
        raw["jump_ratio"] = args.jump_ratio
    if args.window is not None:
        raw["window"] = args.window
        raw["min_points"] = min(3, args.window) if args.window >= 1 else 3
    try:
        return parse_loss_settings(raw, "loss", "command line")
    except ConfigError as exc:
        raise UsageError(str(exc).replace("command line: loss.", "--").replace("_", "-")) from None


def cmd_loss(args: argparse.Namespace) -> int:
    from ckptwatch.losswatch import analyse_run

    path = args.path
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or directory")
    settings = _settings(args)
    root = path
    if os.path.isfile(path):  # one file: analyse just it
        from dataclasses import replace

        root = os.path.dirname(os.path.abspath(path))
        settings = replace(settings, sources=(os.path.abspath(path),))
    elif not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(f"{path}: permission denied")
    report = analyse_run(root, settings)
    if args.plot:
        try:
            from ckptwatch.losswatch.plot import plot_history
        except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
            raise UsageError(f"--plot needs matplotlib ({exc})") from None
        try:
            plot_history(report, args.plot)
        except OSError as exc:
            raise UsageError(f"{args.plot}: cannot write the plot: {exc.strerror}") from None
        except ImportError as exc:
            raise UsageError(f"--plot needs matplotlib ({exc})") from None
    if args.json:
        print(json.dumps({"version": 1, "root": report.root, "loss": report.to_json()}, indent=2))
    else:
        _print(report)
    return EXIT_JUMP if report.alert else EXIT_OK


def _f(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _print(report: LossReport) -> None:
    out = sys.stdout
    print(f"run {report.root}", file=out)
    if not report.segments:
        print("  no loss found (looked for trainer_state.json, TensorBoard events, metrics.csv, *.jsonl, "
              "*.log/*.txt)", file=out)
    for s in report.segments:
        print(f"  {s.source:13} "
              f"{os.path.relpath(s.writer, report.root) if s.writer.startswith('/') else s.writer}: steps "
              f"{s.first_step}-{s.last_step} ({s.points} points), loss {_f(s.first_loss)} -> "
              f"{_f(s.last_loss)}", file=out)
    for r in report.resumes:
        mark = "ALERT" if r.alert else ("?" if not r.judged else "ok")
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        print(f"  resume at step {r.at_step} (from {r.from_checkpoint or r.from_step}): before "
              f"{_f(r.before)}, after {_f(r.after)}, {ratio} [{mark}]", file=out)
        print(f"    {r.reason}", file=out)
    for note in report.notes:
        print(f"  note: {note}", file=out)
    print(f"verdict: {report.verdict()}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ckptwatch")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except CkptwatchError as exc:
        print(f"ckptwatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
