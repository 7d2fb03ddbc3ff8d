"""TOML config -> frozen, validated settings. Every error names the file and the dotted key.

Only keys that something reads are accepted: an unknown key is an error, never silently ignored, so
a config can not promise a behaviour ckptwatch does not have. Key names follow DESIGN.md (a contract:
add keys, never rename). Keys of features still to come (retention, mirror, loss) are added
with those features; the ``[alerts]`` table is parsed by ``ckptwatch/alerts/config.py``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from typing import Any

from ckptwatch.alerts.config import AlertsConfig, parse_alerts_config
from ckptwatch.errors import ConfigError
from ckptwatch.layouts.registry import NAMES
from ckptwatch.losswatch.settings import LossSettings, parse_loss_settings
from ckptwatch.settle import parse_duration

DEFAULT_SETTLE_SECONDS = 60.0
DEFAULT_STALE_AFTER = 1800.0


@dataclass(frozen=True)
class WatchConfig:
    path: str
    layout: str = "auto"
    expected_ranks: int | None = None
    observer: str = "auto"  # auto | inotify | polling (service only)
    latest_good: bool = False  # service keeps a ckptwatch-latest pointer in each run root
    loss: LossSettings | None = LossSettings()  # [watch.loss]; None = enabled = false


@dataclass(frozen=True)
class ServiceConfig:
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    stale_after: float = DEFAULT_STALE_AFTER
    state_dir: str = ""  # "" = default_state_dir()
    log_format: str = "auto"  # auto | json | console
    # Whole-root pass on a timer, the safety net under events (overflow is handled on its own). 600 s:
    # over 100,000 files the pass costs 2-3 s of CPU on 2 cores, 0.7-1.0 % of a core at 300 s (the
    # idle target is 1 %), 0.35-0.5 % at 600 s (bench/README section 4).
    rescan_seconds: float = 600.0
    metrics_port: int = 0  # 0 = off; else a Prometheus endpoint on 127.0.0.1


@dataclass(frozen=True)
class Config:
    source: str
    service: ServiceConfig
    watches: tuple[WatchConfig, ...]
    alerts: AlertsConfig = AlertsConfig()


_SERVICE_KEYS = {"settle_seconds", "stale_after", "state_dir", "log_format", "rescan_seconds", "metrics_port"}
_WATCH_KEYS = {"path", "layout", "expected_ranks", "observer", "latest_good", "loss"}


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    return parse_config(raw, path)


DEFAULT_CONFIG = "/etc/ckptwatch/config.toml"  # where the README's install puts it


def config_warnings(path: str) -> list[str]:
    """What a valid config should still not do: hold literal secrets where others can read them."""
    from ckptwatch.alerts.config import secret_exposure_warning

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return []  # load_config reports those
    warning = secret_exposure_warning(path, raw)
    return [warning] if warning else []


def parse_config(raw: dict[str, Any], source: str) -> Config:
    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {why}")

    unknown = set(raw) - {"service", "watch", "alerts"}
    if unknown:
        raise fail(sorted(unknown)[0], "unknown key (known: service, watch, alerts)")
    if "alerts" in raw and not isinstance(raw["alerts"], dict):
        raise fail("alerts", "must be a table")
    alerts = parse_alerts_config(raw.get("alerts"), source)
    service_raw = raw.get("service", {})
    if not isinstance(service_raw, dict):
        raise fail("service", "must be a table")
    for key in service_raw:
        if key not in _SERVICE_KEYS:
            raise fail(f"service.{key}", f"unknown key (known: {', '.join(sorted(_SERVICE_KEYS))})")
    settle = service_raw.get("settle_seconds", DEFAULT_SETTLE_SECONDS)
    if isinstance(settle, bool) or not isinstance(settle, (int, float)) or settle < 0:
        raise fail("service.settle_seconds", f"must be a number of seconds >= 0, not {settle!r}")
    stale = service_raw.get("stale_after", DEFAULT_STALE_AFTER)
    try:
        stale_s = parse_duration(str(stale)) if not isinstance(stale, bool) else -1
    except ValueError as exc:
        raise fail("service.stale_after", str(exc)) from None
    if stale_s < 0:
        raise fail("service.stale_after", f"must be a duration such as \"30m\", not {stale!r}")
    state_dir = service_raw.get("state_dir", "")
    if not isinstance(state_dir, str):
        raise fail("service.state_dir", "must be a directory path")
    log_format = service_raw.get("log_format", "auto")
    if log_format not in ("auto", "json", "console"):
        raise fail("service.log_format", f"{log_format!r} is not one of auto, json, console")
    rescan = service_raw.get("rescan_seconds", ServiceConfig.rescan_seconds)
    if isinstance(rescan, bool) or not isinstance(rescan, (int, float)) or rescan <= 0:
        raise fail("service.rescan_seconds", f"must be a number of seconds > 0, not {rescan!r}")
    metrics_port = service_raw.get("metrics_port", 0)
    if isinstance(metrics_port, bool) or not isinstance(metrics_port, int) or not 0 <= metrics_port <= 65535:
        raise fail("service.metrics_port", f"must be a TCP port (1-65535) or 0 for off, not {metrics_port!r}")

    watches_raw = raw.get("watch", [])
    if not isinstance(watches_raw, list) or not all(isinstance(w, dict) for w in watches_raw):
        raise fail("watch", "must be [[watch]] tables")
    watches = []
    for i, w in enumerate(watches_raw):
        where = f"watch[{i}]"
        for key in w:
            if key not in _WATCH_KEYS:
                raise fail(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(_WATCH_KEYS))})")
        path = w.get("path")
        if not isinstance(path, str) or not path:
            raise fail(f"{where}.path", "is required: the output dir to watch")
        layout = w.get("layout", "auto")
        if layout not in ("auto", *NAMES):
            raise fail(f"{where}.layout", f"{layout!r} is not one of auto, {', '.join(NAMES)}")
        ranks = w.get("expected_ranks")
        if ranks is not None and (isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1):
            raise fail(f"{where}.expected_ranks", f"must be a whole number >= 1, not {ranks!r}")
        observer = w.get("observer", "auto")
        if observer not in ("auto", "inotify", "polling"):
            raise fail(f"{where}.observer", f"{observer!r} is not one of auto, inotify, polling")
        latest_good = w.get("latest_good", False)
        if not isinstance(latest_good, bool):
            raise fail(f"{where}.latest_good", f"must be true or false, not {latest_good!r}")
        loss_raw = w.get("loss", {})
        if not isinstance(loss_raw, dict):
            raise fail(f"{where}.loss", "must be a table ([watch.loss])")
        enabled = loss_raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise fail(f"{where}.loss.enabled", f"must be true or false, not {enabled!r}")
        loss = parse_loss_settings({k: v for k, v in loss_raw.items() if k != "enabled"}, f"{where}.loss",
                                   source) if enabled else None
        watches.append(WatchConfig(os.path.abspath(os.path.expanduser(path)), layout, ranks, observer, latest_good,
                                   loss))
    for i, a in enumerate(watches):
        for j, b in enumerate(watches[:i]):
            if a.path == b.path or a.path.startswith(b.path.rstrip(os.sep) + os.sep) \
                    or b.path.startswith(a.path.rstrip(os.sep) + os.sep):
                raise fail(f"watch[{i}].path", f"{a.path} overlaps watch[{j}].path {b.path}: every checkpoint "
                           "in both would be judged (and alerted) twice; keep only the outer one")
    return Config(source, ServiceConfig(float(settle), stale_s, os.path.expanduser(state_dir), log_format,
                                        float(rescan), metrics_port), tuple(watches), alerts)
