"""The TOML config: one typed reader, one frozen keyword-only dataclass per section.

Only keys that something reads are accepted: an unknown key is an error, never silently ignored, so a
config can not promise a behaviour ckptwatch does not have. Key names follow DESIGN.md (a contract: add
keys, never rename). Every error is ``ConfigError("FILE: dotted.key: why")``.

Modules, one job each:

- ``reader``   ``read_table`` (a table + a section dataclass -> an instance), ``Location``, ``setting``,
               ``override`` (values from the command line, by key)
- ``kinds``    what a key can hold: numbers, whole numbers, durations, sizes, booleans, choices, paths,
               lists of strings, sub-tables
- ``service``  ``[service]`` -> ``ServiceConfig``
- ``defaults`` the ``[service]`` defaults the quick commands read without building ``ServiceConfig``
- ``watch``    ``[[watch]]`` -> ``WatchConfig``
- ``loss``     ``[watch.loss]`` -> ``LossSettings``
- ``alerts``   ``[alerts]`` -> ``AlertsConfig`` (channels, routes)
- ``secrets``  ``${ENV}`` in URLs, ``urls_file``, URL masking, exposure warnings
- ``file``     the whole file -> ``Config``; ``load_config``, ``config_warnings``

A section's dataclass is the only place its defaults are written (``ServiceConfig`` takes four of its
own from ``defaults``, which ``latest`` reads without building the section); code that needs a default
reads it from an instance (``ServiceConfig().settle_seconds``), and command-line flags replace keys with
``override(section, {"settle_seconds": 5})``.

Adding a ``[[watch]]`` sub-section, e.g. ``[watch.retention]``:

1. ``ckptwatch/config/retention.py``: a ``@dataclass(frozen=True, kw_only=True) class RetentionConfig``
   whose fields are the keys, each ``setting(Kind(...), default=...)``, with a docstring giving each
   default and why; a ``checked(self, at)`` method for rules that span keys, if any.
2. ``ckptwatch/config/watch.py``: one field in ``WatchConfig``,
   ``retention: RetentionConfig | None = setting(Table(RetentionConfig), default=None)`` (``None``: the
   table is absent, the feature is off).
3. ``tests/test_config_retention.py``: defaults, each key read, each bad value naming
   ``watch[0].retention.KEY``; and the key lines in ``config.example.toml``.

A top-level section (``[mirror]``) is the same with the field in ``Config`` (``file.py``). A kind no
module has yet is a small class with ``read(value, at)`` in ``kinds.py``.

The names below are imported on first use, not with the package: ``verify`` and ``latest`` need only
``ServiceConfig`` and ``override`` (``latest`` without ``--settle``/``--stale-after`` not even those), and
the CLI's start-up time is measured (bench/README).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckptwatch.config.alerts import AlertsConfig, parse_alerts_config
    from ckptwatch.config.file import DEFAULT_CONFIG, Config, config_warnings, load_config, parse_config
    from ckptwatch.config.loss import LossSettings, parse_loss_settings
    from ckptwatch.config.reader import Location, override, read_table, setting
    from ckptwatch.config.service import ServiceConfig
    from ckptwatch.config.watch import WatchConfig

_HOME = {  # name -> the module that defines it
    "AlertsConfig": "alerts", "parse_alerts_config": "alerts",
    "DEFAULT_CONFIG": "file", "Config": "file", "config_warnings": "file", "load_config": "file",
    "parse_config": "file",
    "LossSettings": "loss", "parse_loss_settings": "loss",
    "Location": "reader", "override": "reader", "read_table": "reader", "setting": "reader",
    "ServiceConfig": "service",
    "WatchConfig": "watch",
}
__all__ = ["DEFAULT_CONFIG", "AlertsConfig", "Config", "Location", "LossSettings", "ServiceConfig",
           "WatchConfig", "config_warnings", "load_config", "override", "parse_alerts_config", "parse_config",
           "parse_loss_settings", "read_table", "setting"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
