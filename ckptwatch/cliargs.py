"""Arguments several commands share: the check flags and the CheckOptions they make.

Why a module of its own: ``ckptwatch.cli`` and the commands that live beside their feature
(``retention.cli``) both need them, and neither may import the other (no import cycles). Adding the flags
imports only what their help and choices state; ``check_options`` imports the readers' limits and the
layouts' options when a command runs (the start-up of ``ckptwatch latest`` is measured: bench/startup.py).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ckptwatch.errors import UsageError
from ckptwatch.layouts.registry import NAMES
from ckptwatch.settle import parse_duration

if TYPE_CHECKING:
    from ckptwatch.config import Config, WatchConfig
    from ckptwatch.layouts.base import CheckOptions


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def add_check_args(p: argparse.ArgumentParser) -> None:
    from ckptwatch.config import defaults  # the [service] defaults the help states
    p.add_argument("--json", action="store_true", help="print the versioned JSON report (see README)")
    p.add_argument("--deep", action="store_true",
                   help="also read every byte: zip CRCs, full safetensors reads, MindSpore CRC, "
                        "Megatron hashes")
    p.add_argument("--scan-values", action="store_true",
                   help="with --deep: flag NaN/Inf and all-zero tensors in safetensors files")
    p.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                   help="anything modified within this many seconds is in_progress (default: the config's "
                        f"service.settle_seconds, else {defaults.SETTLE_SECONDS:g})")
    p.add_argument("--stale-after", type=duration, default=None, metavar="DURATION",
                   help="a temp/staging marker older than this means a killed save (default: the config's "
                        f"service.stale_after, else {defaults.STALE_AFTER:g} s)")
    p.add_argument("--expected-ranks", type=positive_int, metavar="N",
                   help="ranks to expect when neither metadata nor sibling checkpoints tell")
    p.add_argument("--layout", default="auto", choices=("auto", *NAMES), help="force one layout")


def check_options(args: argparse.Namespace, config: "Config | None" = None,
             watch: "WatchConfig | None" = None) -> CheckOptions:
    """Command-line flags win over the config file, which wins over the defaults."""
    if args.settle is not None and args.settle < 0:
        raise UsageError(f"--settle must be 0 or more, not {args.settle:g}")
    if args.scan_values and not args.deep:
        raise UsageError("--scan-values reads every tensor; it needs --deep")
    from ckptwatch.formats.limits import default_limits, limits_of
    from ckptwatch.layouts.base import CheckOptions

    if config is None and args.settle is None and args.stale_after is None:
        # The [service] defaults as they are: no section to build (~3 ms of `latest RUN`'s start-up).
        from ckptwatch.config import defaults

        settle, stale, limits = defaults.SETTLE_SECONDS, defaults.STALE_AFTER, default_limits()
    else:
        from ckptwatch.config import ServiceConfig, override

        service = override(config.service if config else ServiceConfig(),
                           {"settle_seconds": args.settle, "stale_after": args.stale_after})
        settle, stale, limits = service.settle_seconds, service.stale_after, limits_of(service)
    ranks = args.expected_ranks or (watch.expected_ranks if watch else None)
    return CheckOptions(deep=args.deep, scan_values=args.scan_values, settle_seconds=settle,
                        stale_after=stale, expected_ranks=ranks, limits=limits,
                        allow_hazards=getattr(args, "allow_hazards", False))
