"""``ckptwatch mirror PATH --to DIR|URL``, ``ckptwatch restore COPY DEST`` and ``ckptwatch verify COPY``.

``--to``, ``COPY`` and ``verify``'s ``PATH`` may be ``s3://bucket/prefix[/run/checkpoint]`` URLs
(``mirror.targets.target_for`` chooses the target; ``--endpoint-url`` or ``AWS_ENDPOINT_URL`` names the
endpoint, and credentials come from the environment or ``~/.aws``, never from a flag).

The same code the service's mirror sink will run (``mirror.copy``). Exit codes: ``mirror`` 0 when every
complete checkpoint is committed or up to date (incomplete and in-progress ones are listed as skipped:
they are not backups yet), 1 when any failed, conflicts with its committed copy or was skipped for a
hazard; ``restore`` 0 restored, 1 refused (the file named); ``verify`` of a copy 0 good, 1 not.

SIGTERM or SIGINT during ``mirror`` aborts the uploads in flight (``cancel.CancellableTarget``: a local temp
removed, an S3 multipart upload aborted), commits nothing more, says so and exits 130; a second signal
kills at once. The files already in place are kept for the next run to resume (the copy's journal).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ckptwatch.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEMS, CkptwatchError, UsageError

COPY_NAMES = (".ckptwatch-mirror.json", ".ckptwatch-mirror-committed", ".ckptwatch-mirror-journal.json",
              ".ckptwatch-mirror-lock")


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ckptwatch.cliargs import add_check_args, positive_int

    p = subparsers.add_parser("mirror", help="copy every complete checkpoint under PATH to --to, verified, "
                              "with a manifest and a commit marker written last")
    p.add_argument("path", metavar="PATH", help="an output dir (a run, or a dir of runs)")
    p.add_argument("--to", metavar="TO", help="the target: a directory or s3://bucket/prefix; copies go to "
                   "TO/<run>/<checkpoint>/ (default: the [watch.mirror] of --config's watch holding PATH)")
    p.add_argument("--config", metavar="FILE", help="use [watch.mirror] (and the check settings) of the "
                   "[[watch]] holding PATH; flags override its keys")
    add_endpoint_arg(p)
    p.add_argument("--verify", choices=("size", "full"), default=None,
                   help="size (default): check the copy's sizes; full: re-read and re-hash it before "
                        "committing")
    p.add_argument("--parallel", type=positive_int, default=None, metavar="N", help="files copied at once")
    p.add_argument("--max-rate", type=rate, default=None, metavar="RATE",
                   help="cap what the mirror writes at RATE bytes per second, all files together (e.g. "
                        "100MB, 1GiB: binary units; default: no cap)")
    p.add_argument("--mirror-hazards", action="store_true",
                   help="also mirror complete checkpoints whose resume hazards would load the wrong weights")
    add_check_args(p)
    r = subparsers.add_parser("restore", help="copy a mirrored checkpoint back to DEST, verifying every hash")
    r.add_argument("copy", metavar="COPY", help="the copy's directory or URL (<to>/<run>/<checkpoint>), or "
                   "a run's (<to>/<run>: every committed copy, and the run's pointers such as DeepSpeed's "
                   "latest)")
    add_endpoint_arg(r)
    r.add_argument("dest", metavar="DEST", help="a new path to restore into: the checkpoint dir, the file "
                   "of a single-file copy, or the run dir of a per-rank set or a run")
    r.add_argument("--json", action="store_true")


def rate(text: str) -> int:
    """``--max-rate``: bytes per second, read as ``[watch.mirror] max_rate`` is."""
    from ckptwatch.config.mirror import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_endpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", metavar="URL", default=None,
                   help="the S3 endpoint of an s3:// target (default: AWS_ENDPOINT_URL, the AWS config)")


def _target(to: str, endpoint_url: str | None) -> Any:
    """The target ``to`` names (a directory or an s3:// URL); a usage error for a URL it cannot use."""
    from ckptwatch.mirror.targets import target_for

    try:
        return target_for(to, endpoint_url=endpoint_url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def is_copy(path: str) -> bool:
    """Is ``path`` a mirrored copy (it holds a manifest, a marker or a journal of ours)?"""
    return os.path.isdir(path) and any(os.path.lexists(os.path.join(path, n)) for n in COPY_NAMES)


def cmd_mirror(args: argparse.Namespace) -> int:
    from ckptwatch.mirror.cancel import Cancel

    cancel = Cancel()
    with _stop_on_signals(cancel):
        return _mirror(args, cancel)


def _mirror(args: argparse.Namespace, cancel: Any) -> int:
    from ckptwatch.cliargs import check_options
    from ckptwatch.config import WatchConfig, override
    from ckptwatch.config.mirror import MirrorConfig
    from ckptwatch.engine import check_root
    from ckptwatch.mirror.copy import mirror_checkpoint
    from ckptwatch.mirror.targets import is_url
    from ckptwatch.mirror.throttle import throttled

    path = os.path.abspath(args.path)
    if not os.path.isdir(path):
        raise UsageError(f"{args.path}: not a directory")
    file_config, watch = _watch_of(args, path)
    if args.to is None and (watch is None or watch.mirror is None):
        none = f" ({args.config} has none for {path})" if args.config else ""
        raise UsageError("mirror needs --to DIR|URL, or --config FILE whose [[watch]] holding PATH has a "
                         f"[watch.mirror] table{none}")
    to = args.to if args.to is None or is_url(args.to) else os.path.abspath(args.to)
    base = watch.mirror if watch is not None and watch.mirror is not None else MirrorConfig(to=to or "")
    config = override(base, {"to": to, "verify": args.verify, "parallel": args.parallel,
                             "mirror_hazards": args.mirror_hazards or None,
                             "endpoint_url": args.endpoint_url, "max_rate": args.max_rate})
    # runs are named by their path below the watch's root, or below PATH (copy.run_name)
    config = dataclasses.replace(config, runs_under=watch.path if watch is not None else path)
    if not is_url(config.to) and (config.to == path or config.to.startswith(path.rstrip("/") + "/")):
        raise UsageError(f"--to {config.to} is inside {args.path}: the copies would be judged as "
                         "checkpoints of the run (choose a directory outside it)")
    from ckptwatch.mirror.cancel import CancellableTarget

    # one bucket for all runs; SIGTERM/SIGINT: the upload in flight aborts
    target = CancellableTarget(throttled(_target(config.to, config.endpoint_url), config.max_rate), cancel)
    layout = watch.layout if args.layout == "auto" and watch is not None else args.layout
    watch = watch or WatchConfig(path=path, layout=args.layout, expected_ranks=args.expected_ranks)
    now = time.time()
    report = check_root(path, check_options(args, file_config, watch), now, layout=layout)
    code = EXIT_OK
    runs: list[dict[str, Any]] = []
    for run in report.runs:
        outcomes: list[Any] = []

        def copy_run(run: Any = run, outcomes: list[Any] = outcomes) -> None:
            for v in reversed(run.checkpoints):  # newest first, as copy.mirror_run; each printed when done
                with _metered(target, v.bytes, os.path.basename(v.path), json=args.json) as shown:
                    o = mirror_checkpoint(v, run.root, shown, config, now=now)
                outcomes.append(o)
                if not args.json:
                    _print_outcome(o)

        _interruptible(copy_run, run.root, cancel)
        for o in outcomes:
            hazard_skip = o.result == "skipped" and o.reason.startswith("complete")
            if o.result in ("failed", "conflict") or hazard_skip:
                code = EXIT_PROBLEMS
        runs.append({"root": run.root, "mirror": {"to": target.url, "verify": config.verify,
                                                  "checkpoints": [o.as_json() for o in outcomes]}})
    if args.json:
        json.dump({"version": 1, "runs": runs}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not report.runs:
        print(f"ckptwatch: no checkpoints found under {path}", file=sys.stderr)
    failed = sum(1 for r in runs for c in r["mirror"]["checkpoints"] if c["result"] == "failed")
    if failed and not args.json:
        print(f"ckptwatch: {failed} checkpoint{'s' if failed > 1 else ''} not mirrored: fix the cause named "
              "above (space, permissions, credentials, the endpoint) and run the same command again; the "
              "files already copied are kept and verified, not copied twice", file=sys.stderr)
    return code


@contextlib.contextmanager
def _metered(target: Any, total: int, desc: str, *, json: bool, reads: bool = False) -> Iterator[Any]:
    """``target``, its upload bytes (``reads``: its read bytes) feeding a progress bar while the block
    runs; ``target`` itself when no bar is drawn (not a terminal, or ``--json``)."""
    from ckptwatch.progressbar import bar

    shown = bar(total, desc, json=json)
    if shown is None:
        yield target
        return
    from ckptwatch.mirror.manifest import OURS
    from ckptwatch.mirror.progress import CountingTarget

    with shown:  # our own names (manifest, marker, journal) are not in the bar's total
        yield CountingTarget(target, shown.add, writes=not reads, reads=reads,
                             counted=lambda name: name.rsplit("/", 1)[-1] not in OURS)


def _watch_of(args: argparse.Namespace, path: str) -> tuple[Any, Any]:
    """(the config file, the [[watch]] whose path holds ``path``) with --config; (None, None) without.
    A usage error when no watch holds it: the flags alone would silently ignore the file."""
    if not args.config:
        return None, None
    from ckptwatch.config import load_config

    config = load_config(args.config)
    holders = [w for w in config.watches if path == w.path or path.startswith(w.path.rstrip("/") + "/")]
    if not holders:
        raise UsageError(f"{path} is not under any [[watch]] path of {args.config}; give the watch's path "
                         "(or a run inside it), or --to without --config")
    return config, max(holders, key=lambda w: len(w.path))  # the most specific watch


@contextlib.contextmanager
def _stop_on_signals(cancel: Any) -> Iterator[None]:
    """SIGTERM and SIGINT set ``cancel`` (the copy stops at its next write) and restore the default
    handlers, so a second signal stops the command at once."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def stop(signum: int, frame: object) -> None:
        cancel.set(signal.Signals(signum).name)
        for s in previous:
            signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)

    for s in previous:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interruptible(work: Any, run_root: str, cancel: Any) -> Any:
    """``work()``, or the interrupted command's message and exit code once ``cancel`` stopped it."""
    from ckptwatch.mirror.cancel import Cancelled

    try:
        result = work()
    except Cancelled:
        raise Interrupted(f"mirror of {run_root} interrupted by {cancel.reason}: the upload in flight was "
                          "aborted and nothing of it was committed; run the same command again to resume "
                          "(the files already copied are kept)") from None
    if cancel.is_set():  # the signal came after the last write: everything returned was committed
        raise Interrupted(f"mirror interrupted by {cancel.reason} after {run_root}; run the same command "
                          "again to mirror the rest")
    return result


class Interrupted(CkptwatchError):
    """``ckptwatch mirror`` stopped by a signal (exit 130, like Ctrl-C)."""

    exit_code = EXIT_INTERRUPTED


def _print_outcome(o: Any) -> None:
    from ckptwatch.alerts.messages import human_bytes

    name = os.path.basename(o.checkpoint)
    if o.result == "committed":
        extra = f", {o.resumed} kept from an interrupted copy" if o.resumed else ""
        print(f"committed   {name} -> {o.copy} ({o.files} files, {human_bytes(o.bytes)}{extra})")
    elif o.result == "up_to_date":
        print(f"up to date  {name} -> {o.copy}")
    else:
        print(f"{o.result:<11} {name}: {o.reason}")


def _unreadable(exc: OSError, copy: str) -> list[Any]:
    """The finding for a copy whose storage failed (unreachable endpoint, credentials, permissions)."""
    from ckptwatch.mirror.restore import CopyFinding

    where = str(exc.filename) if exc.filename else copy
    return [CopyFinding("unreadable", where, f"{where}: {exc.strerror or exc}; the copy was not checked")]


def _findings_json(findings: list[Any]) -> list[dict[str, str]]:
    return [{"kind": f.kind, "file": f.file, "message": f.message} for f in findings]


def cmd_restore(args: argparse.Namespace) -> int:
    from ckptwatch.mirror.restore import RestoreRefused, is_run_copy, restore, restore_run
    from ckptwatch.mirror.targets import is_url

    copy = args.copy if is_url(args.copy) else os.path.abspath(args.copy)
    if not is_url(copy) and not os.path.isdir(copy):
        raise UsageError(f"{args.copy}: not a directory (COPY is <to>/<run>/<checkpoint>)")
    try:
        try:
            target = _target(copy, args.endpoint_url)
            if is_run_copy(target):
                return _restored_run(restore_run(target, "", args.dest), args)
            with _metered(target, _copy_bytes(target, args.json), os.path.basename(copy.rstrip("/")),
                          json=args.json, reads=True) as shown:
                manifest = restore(shown, "", args.dest)
        except OSError as exc:  # the copy's storage cannot be reached or read (nothing is left at DEST)
            raise RestoreRefused(_unreadable(exc, copy)) from None
    except RestoreRefused as exc:
        if args.json:
            json.dump({"version": 1, "restored": None, "refused": _findings_json(exc.findings)}, sys.stdout,
                      indent=2)
            sys.stdout.write("\n")
        for f in exc.findings:
            print(f"ckptwatch: restore refused: {f.message}", file=sys.stderr)
        return EXIT_PROBLEMS
    dest = os.path.abspath(args.dest)
    if args.json:
        json.dump({"version": 1, "restored": dest, "files": len(manifest.files), "bytes": manifest.bytes,
                   "source_path": manifest.source_path, "refused": []}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"restored {dest} ({len(manifest.files)} files, every {manifest.algorithm} hash verified; "
              f"copied from {manifest.source_host}:{manifest.source_path})")
    return EXIT_OK


def _copy_bytes(target: Any, json: bool) -> int:
    """The bytes a restore or check of the copy will read (its manifest's total), for the bar's length;
    0 when no bar is drawn or the copy has no readable manifest (the restore then says why)."""
    from ckptwatch.progressbar import wanted

    if not wanted(json=json):
        return 0
    from ckptwatch.mirror import manifest as mf

    try:
        state = mf.copy_state(target, "")
    except (OSError, mf.ManifestError):
        return 0
    return state.manifest.bytes if state.manifest is not None else 0


def _restored_run(done: Any, args: argparse.Namespace) -> int:
    """Report ``restore_run``'s result: exit 0 (copies not committed are listed, not restored)."""
    dest = os.path.abspath(args.dest)
    if args.json:
        json.dump({"version": 1, "restored": dest, "copies": list(done.copies),
                   "pointers": list(done.pointers),
                   "files": done.files, "bytes": done.bytes, "skipped": _findings_json(list(done.skipped)),
                   "refused": []}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        pointers = f"; pointers {', '.join(done.pointers)}" if done.pointers else ""
        print(f"restored the run {dest}: {len(done.copies)} checkpoints ({', '.join(done.copies)}), "
              f"{done.files} files, every hash verified{pointers}")
    for f in done.skipped:
        print(f"ckptwatch: not restored: {f.message}", file=sys.stderr)
    return EXIT_OK


def cmd_verify_copy(args: argparse.Namespace) -> int:
    """``verify`` on a copy's directory: check it in place against its manifest."""
    from ckptwatch.mirror.restore import verify_copy
    from ckptwatch.mirror.targets import is_url

    copy = args.path if is_url(args.path) else os.path.abspath(args.path)
    target = _target(copy, getattr(args, "endpoint_url", None))
    try:
        with _metered(target, _copy_bytes(target, args.json), os.path.basename(copy.rstrip("/")),
                      json=args.json, reads=True) as shown:
            manifest, findings = verify_copy(shown, "")
    except OSError as exc:  # the copy's storage cannot be reached or read
        manifest, findings = None, _unreadable(exc, copy)
    if args.json:
        json.dump({"version": 1, "copy": copy, "committed": manifest is not None,
                   "ok": manifest is not None and not findings, "findings": _findings_json(findings)},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif findings:
        for f in findings:
            print(f"{f.kind}: {f.message}")
    else:
        assert manifest is not None
        print(f"{copy}: a committed copy of {manifest.source_host}:{manifest.source_path}, "
              f"{len(manifest.files)} files, every {manifest.algorithm} hash verified")
    return EXIT_OK if manifest is not None and not findings else EXIT_PROBLEMS
