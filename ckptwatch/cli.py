"""Command line: argument parsing and one function per command returning an exit code.

Exit codes (all defined in errors.py): 0 all good, 1 problems found, 2 usage or config error, 3 internal
error (a bug: the message says how to get the traceback), 4 to 7 a state store the service cannot use.
Bad *checkpoints* are findings, never exceptions.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import stat
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Sequence

from ckptwatch import __version__
from ckptwatch.cliargs import add_check_args as _check_args
from ckptwatch.cliargs import check_options as _options
from ckptwatch.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEMS,
    CkptwatchError,
    ConfigError,
    UsageError,
)
from ckptwatch.errors import EXIT_USAGE as EXIT_USAGE  # unused here; re-exported beside the other three

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig

    _Sub = argparse._SubParsersAction[argparse.ArgumentParser]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # argparse exits 2 itself; keep our wording and code
        raise UsageError(f"{self.prog}: {message} (see --help)")


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, its width found without importing ``shutil``.

    Why: argparse makes a formatter for every argument it adds (to check the metavar), and the formatter
    imports shutil for ``get_terminal_size``; shutil brings zlib, bz2, lzma and fnmatch, about 2.5 ms of
    every start (bench/startup.py) for a width that only --help uses. ``terminal_columns`` gives the
    width ``shutil.get_terminal_size`` gives (tests/test_cli_imports.py compares them).
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None, **kwargs: Any) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width, **kwargs)


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS if a positive number, else the terminal's width
    (of the process's original stdout), else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns or 80


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command (``command=None``), or only ``command``'s subparser.

    Why the second form: ``main`` parses ``ckptwatch latest RUN`` with a parser that holds ``latest``
    alone. A launcher runs ``latest`` before every restart, on thousands of nodes, and building all
    eleven subparsers took ~6 ms of CPU (plus the modules defining the loss, prune and mirror flags),
    as much as judging a small run's newest checkpoint; a parser holding one command parses that
    command's arguments, prints its ``--help`` and words its errors exactly as the whole tree does.
    Building the tree imports no command's implementation (only help texts, arguments and their
    defaults): each ``cmd_`` function imports what it runs.
    """
    parser = _Parser(prog="ckptwatch", description="Checkpoint watchdog: completeness across ranks, resume "
                     "hazards, the newest resumable checkpoint.")
    parser.add_argument("--version", action="version", version=f"ckptwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    adders = [_SUBPARSERS[command]] if command in _SUBPARSERS else dict.fromkeys(_SUBPARSERS.values())
    for add in adders:
        add(sub)
    return parser


def _add_once(sub: _Sub) -> None:
    once = sub.add_parser("once", help="judge every checkpoint under the given output dirs and exit")
    once.add_argument("paths", nargs="*", metavar="PATH")
    once.add_argument("--config", metavar="FILE", help="judge every [[watch]] path of this config file")
    once.add_argument("--no-loss", action="store_true",
                      help="skip the loss watch (resumes and loss jumps read from the runs' logs)")
    _check_args(once)
    _allow_hazards_arg(once)


def _add_verify(sub: _Sub) -> None:
    verify = sub.add_parser("verify", help="judge one checkpoint (a directory or a single file), or check a "
                            "mirrored copy against its manifest")
    verify.add_argument("path", metavar="PATH")
    _check_args(verify)
    from ckptwatch.mirror.cli import add_endpoint_arg

    add_endpoint_arg(verify)  # for a copy at an s3:// URL


def _add_latest(sub: _Sub) -> None:
    latest = sub.add_parser("latest", help="print the newest resumable checkpoint of the run(s) at PATH")
    latest.add_argument("path", metavar="PATH")
    latest.add_argument("--print0", action="store_true",
                        help="end the path with NUL instead of a newline, and print any path (one with a "
                             "newline in its name included), byte for byte")
    _check_args(latest)
    _allow_hazards_arg(latest)


def _allow_hazards_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-hazards", action="store_true",
                   help="a complete checkpoint whose resume hazards would load the wrong weights may "
                        "still be named as the one to resume from (by default it is skipped)")


def _add_run(sub: _Sub) -> None:
    run = sub.add_parser("run",
                         help="the long-running service: watch the config's roots, judge settled checkpoints")
    run.add_argument("--config", required=True, metavar="FILE")


def _add_alert(sub: _Sub) -> None:
    alert = sub.add_parser("alert", help="alert channel tools")
    alert_sub = alert.add_subparsers(dest="alert_command", required=True, parser_class=_Parser)
    alert_test = alert_sub.add_parser("test", help="send a test message to every configured channel")
    alert_test.add_argument("--config", metavar="FILE", help="default: /etc/ckptwatch/config.toml")


def _add_config(sub: _Sub) -> None:
    config = sub.add_parser("config", help="config file tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    check = config_sub.add_parser("check",
                                  help="validate a config file and say what the service would do with it")
    check.add_argument("file", metavar="FILE")


def _add_loss(sub: _Sub) -> None:
    from ckptwatch.losswatch.cli import add_parser as add_loss_parser

    add_loss_parser(sub)


def _add_prune(sub: _Sub) -> None:
    from ckptwatch.retention.cli import add_parser as add_prune_parser

    add_prune_parser(sub)


def _add_mirror(sub: _Sub) -> None:
    """``mirror`` and ``restore`` (one function adds both)."""
    from ckptwatch.mirror.cli import add_parsers as add_mirror_parsers

    add_mirror_parsers(sub)


def _add_status(sub: _Sub) -> None:
    status = sub.add_parser("status",
                            help="what the service knows: per run, newest complete and open problems")
    status.add_argument("--config", metavar="FILE", help="the service's config (for its state_dir)")
    status.add_argument("--json", action="store_true")


# command -> the function adding its subparser, in the order --help lists them
_SUBPARSERS = {"once": _add_once, "verify": _add_verify, "latest": _add_latest, "run": _add_run,
               "alert": _add_alert, "config": _add_config, "loss": _add_loss, "prune": _add_prune,
               "mirror": _add_mirror, "restore": _add_mirror, "status": _add_status}


def _command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs when it starts with one (``latest RUN``), else None (``--help``,
    ``--version`` or a mistake: the whole tree, for the top-level help and the list of commands)."""
    return argv[0] if argv and argv[0] in _SUBPARSERS else None


def _existing(path: str) -> str:
    if not os.path.lexists(path):
        raise UsageError(f"{path}: no such file or directory")
    if not os.path.exists(path):
        raise UsageError(f"{path}: a symlink whose target does not exist")
    return os.path.abspath(path)


def cmd_once(args: argparse.Namespace) -> int:
    from ckptwatch.config import WatchConfig, override
    from ckptwatch.engine import check_root, has_problems
    from ckptwatch.report import write_json, write_table

    config = None
    if args.config:  # the file's reader (tomllib, [alerts], secrets: ~7 ms of CPU) only when one is named
        from ckptwatch.config import load_config

        config = load_config(args.config)
    targets = [WatchConfig(path=p, layout=args.layout, expected_ranks=args.expected_ranks)
               for p in args.paths]
    if config:
        for i, w in enumerate(config.watches):
            if not os.path.exists(w.path):
                raise ConfigError(f"{config.source}: watch[{i}].path: {w.path} does not exist")
            targets.append(w if args.layout == "auto" else override(w, {"layout": args.layout}))
    if not targets:
        raise UsageError("once needs at least one PATH (or --config FILE with [[watch]] paths)")
    now = time.time()
    reports = [check_root(_existing(w.path), _options(args, config, w), now, layout=w.layout,
                          loss=None if args.no_loss else w.loss) for w in targets]
    retention = _retention_plans(targets, reports, now)
    if args.json:
        write_json(reports, retention=retention, mirror=_mirror_status(targets, reports))
    else:
        write_table(reports)
    return EXIT_PROBLEMS if has_problems(reports) else EXIT_OK


def _retention_plans(targets: "list[WatchConfig]", reports: list[Any],
                     now: float) -> dict[str, dict[str, Any]]:
    """Run root -> the retention plan's JSON, for the runs of watches with ``[watch.retention]``."""
    out: dict[str, dict[str, Any]] = {}
    for watch, report in zip(targets, reports, strict=True):
        if watch.retention is None:
            continue
        from ckptwatch.retention.execute import plan_for, plan_json

        for run in report.runs:
            from ckptwatch.mirror.service import mirrored_check

            out[run.root] = plan_json(plan_for(run, watch.retention, watch.path, now,
                                               mirrored=mirrored_check(watch.mirror, run.root)),
                                      dry_run=watch.retention.dry_run)
    return out


def _mirror_status(targets: "list[WatchConfig]", reports: list[Any]) -> dict[str, dict[str, Any]]:
    """Run root -> where its complete checkpoints stand on the mirror (the target's markers, nothing
    copied), for the runs of watches with ``[watch.mirror]`` (only from ``--config``: no flag names one)."""
    out: dict[str, dict[str, Any]] = {}
    for watch, report in zip(targets, reports, strict=True):
        if watch.mirror is None:
            continue
        from ckptwatch.mirror.status import run_status

        for run in report.runs:
            out[run.root] = run_status(run, watch.mirror)
    return out


def cmd_verify(args: argparse.Namespace) -> int:
    from ckptwatch.mirror.cli import cmd_verify_copy, is_copy
    from ckptwatch.mirror.targets import is_url

    if is_url(args.path):  # a mirrored copy in object storage (s3://...)
        return cmd_verify_copy(args)
    path = _existing(args.path)
    if is_copy(path):
        return cmd_verify_copy(args)
    from ckptwatch.report import verdict_json, write_table
    from ckptwatch.verify import verify_path

    opts = _options(args)
    with _deep_bar(path, args) if args.deep else contextlib.nullcontext():
        result = verify_path(path, opts, time.time(), layout=args.layout)
    if args.json:
        import json

        json.dump({"version": 1, "checkpoint": verdict_json(result.verdict),
                   "run_root": result.run.root if result.run else None}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        write_table([result.as_root_report()])
    v = result.verdict
    return EXIT_OK if v.status.value == "complete" and not v.hazards else EXIT_PROBLEMS


@contextlib.contextmanager
def _deep_bar(path: str, args: argparse.Namespace) -> Iterator[None]:
    """A bytes bar of ``verify --deep``'s reads (on a terminal, without --json): the format readers'
    streaming reads (``formats._stream.read_progress``) count against the checkpoint's file sizes."""
    from ckptwatch.progressbar import Bar, wanted

    if not wanted(json=args.json):
        yield
        return
    from ckptwatch.formats._stream import read_progress

    with Bar(_tree_bytes(path), os.path.basename(path)) as shown:
        previous = read_progress(shown.add)
        try:
            yield
        finally:
            read_progress(previous)


def _tree_bytes(path: str) -> int:
    """The apparent size of the regular files at or below ``path`` (links not followed)."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    total = 0
    for d, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(d, name))
            except OSError:
                continue
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def cmd_latest(args: argparse.Namespace) -> int:
    from ckptwatch.engine import check_root
    from ckptwatch.shellpath import for_terminal as shown
    from ckptwatch.shellpath import path_b64, write_path
    from ckptwatch.vocabulary import full_message

    opts = _options(args)
    root = _existing(args.path)
    report = check_root(root, opts, time.time(), layout=args.layout)
    if not report.runs:
        print(f"ckptwatch: no checkpoints found under {shown(root)}", file=sys.stderr)
        return EXIT_PROBLEMS
    from ckptwatch.resume import blocking_hazards, skipped_newer

    code = EXIT_OK
    for run in report.runs:
        chosen = run.newest_resumable
        skipped = skipped_newer(run)
        if chosen is None:
            code = EXIT_PROBLEMS
            blocked = [v for v, _ in skipped if blocking_hazards(v)]
            if not blocked:
                print(f"ckptwatch: {shown(run.root)}: no complete checkpoint to resume from", file=sys.stderr)
                continue
            print(f"ckptwatch: {shown(run.root)}: no checkpoint is safe to resume from: every complete one "
                  "would make the trainer load the wrong weights. Fix one of these, or pass --allow-hazards "
                  "to resume from the newest complete checkpoint anyway:", file=sys.stderr)
            for v in blocked:
                for h in blocking_hazards(v):
                    print(f"ckptwatch:   {shown(v.path)}: {h.kind}: {shown(full_message(h))}",
                          file=sys.stderr)
            continue
        if args.json:
            import json

            print(json.dumps({"root": run.root, "path": chosen.path, "step": chosen.step,
                              "layout": run.layout, "path_b64": path_b64(chosen.path),
                              "skipped": [{"path": v.path, "reason": why} for v, why in skipped]}))
        else:
            sys.stdout.flush()
            refusal = write_path(chosen.path, sys.stdout.buffer, print0=args.print0)
            if refusal:
                print(f"ckptwatch: refusing to print the checkpoint to resume from: {refusal}",
                      file=sys.stderr)
                code = EXIT_PROBLEMS
        for h in chosen.hazards:
            print(f"ckptwatch: warning: {h.kind}: {shown(full_message(h))}", file=sys.stderr)
        for v, why in skipped:  # newer than the one chosen (checkpoints are in step order)
            print(f"ckptwatch: note: skipped newer {shown(v.path)} ({why})", file=sys.stderr)
            for h in blocking_hazards(v):
                print(f"ckptwatch:   {h.kind}: {shown(full_message(h))}", file=sys.stderr)
    return code


def cmd_run(args: argparse.Namespace) -> int:
    from ckptwatch.config import config_warnings, load_config
    from ckptwatch.daemon import NO_WATCH, Daemon

    config = load_config(args.config)
    for warning in config_warnings(args.config):
        print(f"ckptwatch: warning: {warning}", file=sys.stderr)
    if not config.watches:
        raise ConfigError(f"{args.config}: {NO_WATCH}")
    return Daemon(os.path.abspath(args.config), config).run()


def cmd_config(args: argparse.Namespace) -> int:
    """``config check FILE``: errors exit 2 naming the key; warnings are what would surprise at run time."""
    from ckptwatch.config import load_config
    from ckptwatch.retention.access import check_delete_access, describe
    from ckptwatch.state import default_state_dir
    from ckptwatch.watch import choose_observer, filesystem_type

    config = load_config(args.file)
    warnings: list[str] = []
    state_dir = config.service.state_dir or default_state_dir()
    print(f"{args.file}: valid")
    print(f"  state: {os.path.join(state_dir, 'state.sqlite')}")
    probe = state_dir
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK):
        warnings.append(f"service.state_dir: {state_dir} is not writable by this user (under systemd, "
                        "StateDirectory=ckptwatch provides /var/lib/ckptwatch)")
    if not config.watches:
        warnings.append("watch: no [[watch]] table: `ckptwatch run` needs at least one")
    for i, w in enumerate(config.watches):
        if os.path.isdir(w.path):
            kind = choose_observer(w.path, w.observer)
            fs = filesystem_type(w.path) or "unknown filesystem"
            where = f"observer {kind} ({fs}{', set in config' if w.observer != 'auto' else ''})"
            if kind == "polling":
                cap = f"at most {w.max_stats_per_second:g}" if w.max_stats_per_second else "no cap on"
                where += f" every {w.poll_interval:g} s, {cap} stat + listdir calls per second"
        elif os.path.exists(w.path):
            where = "NOT A DIRECTORY"
            warnings.append(f"watch[{i}].path: {w.path} is not a directory; the service cannot watch it")
        else:
            where = "does not exist yet"
            warnings.append(f"watch[{i}].path: {w.path} does not exist yet; "
                            "the service waits for it to appear")
        ranks = w.expected_ranks or "inferred"
        print(f"  watch[{i}] {w.path}: layout {w.layout}, {where}, expected ranks {ranks}, "
              f"latest_good {'on' if w.latest_good else 'off'}")
        if w.retention is not None:
            access = check_delete_access(w.path, w.layout)
            line = describe(access)
            if access.refused is None:
                print(f"  {line}")
            else:
                warnings.append(line)  # a warning: the service still judges; its deletions would fail
        if w.mirror is not None:
            from ckptwatch.alerts.messages import human_bytes

            cap = f", at most {human_bytes(w.mirror.max_rate)}/s" if w.mirror.max_rate else ""
            print(f"  watch[{i}] mirror: complete checkpoints copied to {w.mirror.to} "
                  f"(verify {w.mirror.verify}, {w.mirror.parallel} files at once{cap})")
    from ckptwatch.alerts.config import mask_url

    routes = {k: [mask_url(u) for u in v] for k, v in sorted(config.alerts.routes.items())}
    if config.alerts.all_urls:
        print(f"  alerts: default route {[mask_url(u) for u in config.alerts.urls]}"
              + (f", routes {routes}" if routes else "") + f", at most {config.alerts.max_per_hour} per hour "
              "per channel")
    else:
        print("  alerts: off (no [alerts] channel)")
    from ckptwatch.config import config_warnings

    warnings.extend(config_warnings(args.file))
    for line in warnings:
        print(f"ckptwatch: warning: {line}", file=sys.stderr)
    return EXIT_OK


def cmd_alert(args: argparse.Namespace) -> int:
    """``alert test``: one test message per channel, synchronously; exit 1 if any failed."""
    from ckptwatch.alerts.cli import cmd_alert_test
    from ckptwatch.config import DEFAULT_CONFIG, load_config

    return cmd_alert_test(load_config(args.config or DEFAULT_CONFIG).alerts)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from ckptwatch.config import load_config
    from ckptwatch.state import StateStore, default_state_dir
    from ckptwatch.statedb import STATE_FILE, translate

    state_dir = (load_config(args.config).service.state_dir if args.config else "") or default_state_dir()
    path = os.path.join(state_dir, STATE_FILE)
    try:
        os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no service state yet (has `ckptwatch run` started with this "
                         "state_dir?)") from None
    except OSError as exc:  # e.g. a 0750 state dir and a user outside its group
        raise translate(exc, path, reading=True) or exc from None
    store = StateStore(path, read_only=True)
    runs = store.runs()
    alerts = store.open_alerts()
    store.close()
    now = time.time()
    for r in runs:
        r["alerts_open"] = alerts.pop(r["run"], [])
        _add_mirror_lag(r, now)
    service_alerts = [a for group in alerts.values() for a in group]  # disk_low, service_error: no run
    if args.json:
        json.dump({"version": 1, "state": path, "runs": runs, "alerts_open": service_alerts}, sys.stdout,
                  indent=2)
        sys.stdout.write("\n")
    else:
        for r in runs:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(r["counts"].items()))
            newest = r["newest_complete"]
            print(f"{r['run']}: {counts}")
            print(f"  newest complete: {newest['path'] if newest else 'none'}")
            if r["mirror"] is not None:
                print(f"  mirror: {_mirror_line(r['mirror'])}")
            for o in r["open"]:
                print(f"  {o['status']}: {o['checkpoint']}")
                for finding in o["problems"] + o["hazards"]:  # the same messages and advice as once --json
                    print(f"    {finding['kind']}: {finding['message']}")
            for a in r["alerts_open"]:
                print(f"  alert open since {time.strftime('%Y-%m-%d %H:%M', time.localtime(a['since']))}: "
                      f"{a['kind']}{' ' + os.path.basename(a['checkpoint']) if a['checkpoint'] else ''}")
        for a in service_alerts:
            print(f"alert open: {a['kind']} ({a['checkpoint'] or ''})")
        if not runs:
            print("no checkpoints judged yet")
    return EXIT_PROBLEMS if any(r["open"] for r in runs) else EXIT_OK


def _add_mirror_lag(run: dict[str, Any], now: float) -> None:
    """Put the lag (``mirror.lag``: steps, seconds) into a run's ``mirror`` object of ``status``."""
    mirror = run.get("mirror")
    if mirror is None:
        return
    from ckptwatch.mirror.lag import Mark, mirror_lag

    complete, committed = run["newest_complete"], mirror["newest_committed"]
    lag = mirror_lag(None if complete is None else Mark(complete["path"], complete["step"],
                                                        mirror["newest_complete_mtime"]),
                     None if committed is None else Mark(committed["path"], committed["step"],
                                                         committed["mtime"]), now)
    mirror["lag_steps"] = None if lag is None else lag.steps
    mirror["lag_seconds"] = None if lag is None or lag.seconds is None else round(lag.seconds, 3)


def _mirror_line(mirror: dict[str, Any]) -> str:
    """``status``'s mirror line: the newest committed copy and how far the mirror is behind."""
    committed = mirror["newest_committed"]
    newest = (f"newest committed {os.path.basename(committed['path'])}" if committed
              else "nothing committed yet")
    steps, seconds = mirror["lag_steps"], mirror["lag_seconds"]
    if steps == 0 and seconds == 0:
        return f"{newest} to {mirror['to']}, up to date"
    behind = [f"{steps} steps" if steps is not None else "",
              f"the newest complete checkpoint waiting {_duration(seconds)}" if seconds is not None else ""]
    behind_text = ", ".join(b for b in behind if b)
    return f"{newest} to {mirror['to']}" + (f", behind by {behind_text}" if behind_text else "")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _cmd_loss(args: argparse.Namespace) -> int:
    from ckptwatch.losswatch.cli import cmd_loss

    return cmd_loss(args)


def _cmd_prune(args: argparse.Namespace) -> int:
    from ckptwatch.retention.cli import cmd_prune

    return cmd_prune(args)


def _cmd_mirror(args: argparse.Namespace) -> int:
    from ckptwatch.mirror.cli import cmd_mirror

    return cmd_mirror(args)


def _cmd_restore(args: argparse.Namespace) -> int:
    from ckptwatch.mirror.cli import cmd_restore

    return cmd_restore(args)


COMMANDS = {"once": cmd_once, "verify": cmd_verify, "latest": cmd_latest, "run": cmd_run,
            "status": cmd_status, "config": cmd_config, "alert": cmd_alert, "loss": _cmd_loss,
            "prune": _cmd_prune, "mirror": _cmd_mirror, "restore": _cmd_restore}



# The one-shot checks a launcher or a script runs, whose start-up bench/startup.py measures.
QUICK_COMMANDS = ("latest", "verify", "once")
QUICK_YOUNG_THRESHOLD = 20_000  # the cyclic collector's first threshold while one runs (default 700)


@contextlib.contextmanager
def _fewer_collections(command: str | None) -> Iterator[None]:
    """While a quick command runs, the cyclic garbage collector looks at the young objects every 20,000
    allocations instead of every 700, then goes back to what it was (for callers in the same process).

    Why: the command imports its modules as it goes (engine, layout, readers), and what they allocate
    made the collector run 17 times during ``latest RUN`` (15 young, 2 middle-generation passes, each
    over the growing module graph): ~1.5 ms of its CPU (``python -c pass`` costs ~29 ms in all;
    bench/startup.py), to free next to nothing; now it runs once. Cyclic garbage is still collected,
    a hostile pickle's cycles included, every 20,000 allocations, so memory stays bounded.
    """
    if command not in QUICK_COMMANDS:
        yield
        return
    before = gc.get_threshold()
    gc.set_threshold(QUICK_YOUNG_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with _fewer_collections(_command_of(argv)):
        return _main(argv)


def _main(argv: list[str]) -> int:
    try:
        args = build_parser(_command_of(argv)).parse_args(argv)
        return COMMANDS[args.command](args)
    except CkptwatchError as exc:
        print(f"ckptwatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug in ckptwatch, not bad input: say so, keep the traceback opt-in
        if os.environ.get("CKPTWATCH_DEBUG"):
            raise
        print(f"ckptwatch: internal error: {type(exc).__name__}: {exc}. This is a bug in ckptwatch; "
              f"rerun with CKPTWATCH_DEBUG=1 for the traceback and report it.", file=sys.stderr)
        return EXIT_INTERNAL
