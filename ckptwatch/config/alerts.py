"""``[alerts]``: channels, routes, limits; the one home of the alert defaults.

The keys of DESIGN.md are a contract (``urls`` is the default route, ``[alerts.routes]`` maps a kind
to URLs); everything else extends it::

    [alerts]
    urls = ["slack://${SLACK_TOKEN}"]         # the default route: whatever no route below catches
    urls_file = "/etc/ckptwatch/alerts.secret" # more default-route URLs, one a line (# comments)
    max_per_hour = 20                          # per channel URL; the rest goes out later as a digest
    retries = 3                                # attempts per message and channel, backoff between
    timeout = 10                               # seconds per attempt (connect and read)
    disk_low_percent = 5                       # alert when free space on a watched fs drops below...
    disk_low_free = "50G"                      # ...either threshold (off unless set)
    stalled_after = "2h"                       # default: 3x the median checkpoint interval, >= 10 min; "off"

    [alerts.channels]                          # named groups of URLs
    oncall = ["mailto://...", "slack://..."]

    [alerts.routes]                            # key: a kind or a severity; value: channels or URLs
    loss_jump = ["oncall"]
    error = ["oncall", "mailto://team@example.com"]

Routing: a kind's route wins over its severity's route, which wins over ``urls``. A route replaces
the default, it does not add to it (list the default channel in the route to get both).

Secrets: ``${NAME}`` in any URL is replaced from the environment when the config is loaded (a missing
variable is a config error naming the key and the variable); ``urls_file`` keeps URLs out of a config
that may be world-readable. See ``secrets.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

from ckptwatch.alerts.kinds import KIND_SEVERITY, KINDS, NOT_RAISED_YET, SEVERITIES
from ckptwatch.config.kinds import Duration, Number, Path, Size, Whole
from ckptwatch.config.reader import Location, read_table, setting
from ckptwatch.config.secrets import check_url, expand_env, read_urls_file

STALLED_MIN_SECONDS = 600.0  # the inferred stalled_after never goes below 10 minutes

_CHANNEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _url_list(value: Any, at: Location) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise at.error("must be a list of strings")  # never echo the value: it may hold a secret
    return value


class Urls:
    """A list of apprise URLs, ``${ENV}`` expanded and checked; the value is never echoed."""

    def read(self, value: Any, at: Location) -> tuple[str, ...]:
        return tuple(check_url(expand_env(url, at.item(i)), at.item(i))
                     for i, url in enumerate(_url_list(value, at)))


class Channels:
    """``[alerts.channels]``: name -> a non-empty list of URLs. A name is no alert kind or severity."""

    def read(self, value: Any, at: Location) -> dict[str, tuple[str, ...]]:
        if not isinstance(value, dict):
            raise at.error("must be a table of name = [URLs]")
        channels: dict[str, tuple[str, ...]] = {}
        for name, urls in value.items():
            where = at.key(name)
            if not _CHANNEL_NAME.match(name):
                raise where.error("a channel name is letters, digits, - and _, starting with a letter")
            if name in KINDS or name in SEVERITIES:
                raise where.error("a channel may not be named like an alert kind or severity")
            channels[name] = Urls().read(urls, where)
            if not channels[name]:
                raise where.error("is empty: list at least one URL")
        return channels


class Routes:
    """``[alerts.routes]``: kind or severity -> URLs and channel names (resolved by ``AlertsConfig``)."""

    def read(self, value: Any, at: Location) -> dict[str, tuple[str, ...]]:
        if not isinstance(value, dict):
            raise at.error("must be a table of kind-or-severity = [channels or URLs]")
        routes: dict[str, tuple[str, ...]] = {}
        for name, targets in value.items():
            where = at.key(name)
            if name not in KIND_SEVERITY and name not in SEVERITIES:
                raise where.error(f"unknown kind or severity (kinds: {', '.join(KINDS)}; "
                                  f"severities: {', '.join(SEVERITIES)})")
            if name in NOT_RAISED_YET:
                raise where.error(f"nothing raises {name} yet ({NOT_RAISED_YET[name]}); a route for it would "
                                  "never fire, so it is refused rather than silently kept")
            routes[name] = tuple(check_url(expand_env(t, where.item(i)), where.item(i)) if "://" in t else t
                                 for i, t in enumerate(_url_list(targets, where)))
        return routes


@dataclass(frozen=True, kw_only=True)
class AlertsConfig:
    """Validated alert settings; URLs already have ``${ENV}`` expanded (so: never log them unmasked).

    ``urls`` is the default route, ``urls_file``'s URLs included. ``routes`` maps a kind or a severity
    to the URLs it goes to, channel names already resolved. ``stalled`` is false for
    ``stalled_after = "off"``: no stalled alerts (runs that end are not "stalled").
    """

    urls: tuple[str, ...] = setting(Urls(), default=())
    urls_file: str | None = setting(Path("a file path", empty=False), default=None)
    channels: dict[str, tuple[str, ...]] = setting(Channels(), factory=dict, hashed=False)
    routes: dict[str, tuple[str, ...]] = setting(Routes(), factory=dict, hashed=False)
    # Why 20: a chat channel that gets more than one alert every three minutes for an hour is no longer
    # read, it is muted. One dead node can make every run's checkpoints incomplete at once; 20 still lets a
    # real multi-run incident through message by message, and the digest carries the rest once an hour.
    max_per_hour: int = setting(Whole(0, why="a whole number >= 0 (0 = no limit)"), default=20)
    retries: int = setting(Whole(1, 10, why="a whole number of attempts from 1 to 10"), default=3)
    timeout: float = setting(Duration(0.0, above=True, maximum=300.0,
                                      why="more than 0 and at most 300 seconds"), default=10.0)
    disk_low_percent: float = setting(Number(0.0, maximum=100.0, below=True,
                                             why="a percentage from 0 to 100 (0 = off)"), default=5.0)
    disk_low_free: int | None = setting(Size(), default=None)  # bytes
    stalled_after: float | None = setting(Duration(0.0, above=True, off="off",
                                                   why='a duration > 0 such as "2h"'),
                                          default=None)  # seconds; None = inferred per run
    stalled: bool = True  # no key: stalled_after = "off" sets it

    def checked(self, at: Location) -> AlertsConfig:
        """Append ``urls_file``'s URLs to the default route, resolve channel names in routes, read "off"."""
        urls = self.urls
        if self.urls_file is not None:
            urls += tuple(read_urls_file(self.urls_file, at.key("urls_file")))
        routes = {name: self._resolved(targets, at.key("routes").key(name))
                  for name, targets in self.routes.items()}
        stalled_after, stalled = self.stalled_after, self.stalled
        if stalled_after == math.inf:
            stalled_after, stalled = None, False
        return replace(self, urls=tuple(dict.fromkeys(urls)), routes=routes, stalled_after=stalled_after,
                       stalled=stalled)

    def _resolved(self, targets: tuple[str, ...], at: Location) -> tuple[str, ...]:
        resolved: dict[str, None] = {}
        for i, target in enumerate(targets):
            if "://" in target:
                resolved.setdefault(target)
            elif target in self.channels:
                for url in self.channels[target]:
                    resolved.setdefault(url)
            else:
                raise at.item(i).error(f"{target!r} is neither a URL nor a channel in [alerts.channels]"
                                       f" (channels: {', '.join(self.channels) or 'none'})")
        return tuple(resolved)

    def route(self, kind: str, severity: str) -> tuple[str, ...]:
        """The URLs an alert of this kind and severity goes to: kind route, else severity route, else urls."""
        if kind in self.routes:
            return self.routes[kind]
        if severity in self.routes:
            return self.routes[severity]
        return self.urls

    @property
    def all_urls(self) -> tuple[str, ...]:
        """Every distinct URL any route, group or the default names, in config order."""
        seen: dict[str, None] = {}
        for url in (*self.urls, *(u for us in self.channels.values() for u in us),
                    *(u for us in self.routes.values() for u in us)):
            seen.setdefault(url, None)
        return tuple(seen)


def parse_alerts_config(raw: dict[str, Any] | None, source: str) -> AlertsConfig:
    """Validate the ``[alerts]`` table of ``source``. ``None`` (no table) means: no alerts, defaults."""
    return AlertsConfig() if raw is None else read_table(raw, Location(source, "alerts"), AlertsConfig)
