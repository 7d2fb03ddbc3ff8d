"""The config file as a whole: its top-level tables, loading it, and what a valid file should still not do."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from typing import Any

from ckptwatch.config.alerts import AlertsConfig
from ckptwatch.config.kinds import Table, Tables
from ckptwatch.config.reader import Location, read_table, setting
from ckptwatch.config.secrets import secret_exposure_warning
from ckptwatch.config.service import ServiceConfig
from ckptwatch.config.watch import WatchConfig
from ckptwatch.errors import ConfigError

DEFAULT_CONFIG = "/etc/ckptwatch/config.toml"  # where the README's install puts it


@dataclass(frozen=True, kw_only=True)
class Config:
    source: str  # the file it was read from; no key
    service: ServiceConfig = setting(Table(ServiceConfig), default=ServiceConfig())
    watches: tuple[WatchConfig, ...] = setting(Tables(WatchConfig, "[[watch]] tables"), default=(),
                                               key="watch")
    alerts: AlertsConfig = setting(Table(AlertsConfig), default=AlertsConfig())

    def checked(self, at: Location) -> Config:
        """Two roots where one holds the other would judge (and alert) every shared checkpoint twice."""
        for i, a in enumerate(self.watches):
            for j, b in enumerate(self.watches[:i]):
                if a.path == b.path or a.path.startswith(b.path.rstrip(os.sep) + os.sep) \
                        or b.path.startswith(a.path.rstrip(os.sep) + os.sep):
                    raise at.key("watch").item(i).key("path").error(
                        f"{a.path} overlaps watch[{j}].path {b.path}: every checkpoint in both would be "
                        "judged (and alerted) twice; keep only the outer one")
        return self


def parse_config(raw: dict[str, Any], source: str) -> Config:
    """Validate a parsed TOML document; every error is ``ConfigError("{source}: dotted.key: why")``."""
    return read_table(raw, Location(source), Config, source=source)


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


def config_warnings(path: str) -> list[str]:
    """What a valid config should still not do: hold literal secrets where others can read them."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return []  # load_config reports those
    warning = secret_exposure_warning(path, raw)
    return [warning] if warning else []
