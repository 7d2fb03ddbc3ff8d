"""``[alerts]`` TOML -> a frozen ``AlertsConfig``; secrets from the environment or a file; URL masking.

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
that may be world-readable. ``secret_exposure_warning`` says when a readable config holds literal
secrets. No URL is ever logged unmasked: use ``mask_url``.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ckptwatch.alerts.kinds import KIND_SEVERITY, KINDS, NOT_RAISED_YET, SEVERITIES
from ckptwatch.errors import ConfigError
from ckptwatch.settle import parse_duration

# Why 20: a chat channel that gets more than one alert every three minutes for an hour is no longer
# read, it is muted. One dead node can make every run's checkpoints incomplete at once; 20 still lets a
# real multi-run incident through message by message, and the digest carries the rest once an hour.
DEFAULT_MAX_PER_HOUR = 20
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 10.0
DEFAULT_DISK_LOW_PERCENT = 5.0
STALLED_MIN_SECONDS = 600.0  # the inferred stalled_after never goes below 10 minutes

_KEYS = {"urls", "urls_file", "channels", "routes", "max_per_hour", "retries", "timeout",
         "disk_low_percent", "disk_low_free", "stalled_after"}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")
_CHANNEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class AlertsConfig:
    """Validated alert settings; URLs already have ``${ENV}`` expanded (so: never log them unmasked).

    ``routes`` maps a kind or a severity to the URLs it goes to, channel names already resolved.
    """

    urls: tuple[str, ...] = ()
    channels: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    max_per_hour: int = DEFAULT_MAX_PER_HOUR  # 0 = no limit
    retries: int = DEFAULT_RETRIES
    timeout: float = DEFAULT_TIMEOUT
    disk_low_percent: float = DEFAULT_DISK_LOW_PERCENT
    disk_low_free: int | None = None  # bytes
    stalled_after: float | None = None  # seconds; None = inferred per run
    stalled: bool = True  # stalled_after = "off": no stalled alerts (runs that end are not "stalled")

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


def parse_size(text: str | int) -> int:
    """``"50G"``, ``"500MiB"``, ``"1.5T"``, ``1000000`` -> bytes (binary units). Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size")  # noqa: TRY004 - callers turn ValueError into a ConfigError
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text!r} is negative")
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size (use e.g. 50G, 500M, 1T, or a number of bytes)")
    factor = 1024 ** ("KMGTP".find(m.group(2).upper()) + 1) if m.group(2) else 1
    return int(float(m.group(1)) * factor)


def _expand(value: str, key: str, fail) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise fail(key, f"environment variable {name} is not set")
        return os.environ[name]

    return _ENV.sub(sub, value)


def _url_list(value: Any, key: str, fail) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise fail(key, "must be a list of strings")
    return list(value)


def _check_url(url: str, key: str, fail) -> str:
    if not _URL.match(url):
        # never echo the value: it may be a secret with a typo in its scheme
        raise fail(key, "is not a URL (expected scheme://..., e.g. mailto://, slack://, json://)")
    return url


def parse_alerts_config(raw: dict[str, Any] | None, source: str) -> AlertsConfig:
    """Validate the ``[alerts]`` table of ``source``. ``None`` (no table) means: no alerts, defaults."""

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: alerts.{key}: {why}")

    if raw is None:
        return AlertsConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: alerts: must be a table")
    for key in raw:
        if key not in _KEYS:
            raise fail(key, f"unknown key (known: {', '.join(sorted(_KEYS))})")

    urls = [_check_url(_expand(u, f"urls[{i}]", fail), f"urls[{i}]", fail)
            for i, u in enumerate(_url_list(raw.get("urls", []), "urls", fail))]
    if "urls_file" in raw:
        urls_file = raw["urls_file"]
        if not isinstance(urls_file, str) or not urls_file:
            raise fail("urls_file", "must be a file path")
        urls += _read_urls_file(os.path.expanduser(urls_file), fail)

    channels_raw = raw.get("channels", {})
    if not isinstance(channels_raw, dict):
        raise fail("channels", "must be a table of name = [URLs]")
    channels: dict[str, tuple[str, ...]] = {}
    for name, value in channels_raw.items():
        key = f"channels.{name}"
        if not _CHANNEL_NAME.match(name):
            raise fail(key, "a channel name is letters, digits, - and _, starting with a letter")
        if name in KINDS or name in SEVERITIES:
            raise fail(key, "a channel may not be named like an alert kind or severity")
        channels[name] = tuple(_check_url(_expand(u, f"{key}[{i}]", fail), f"{key}[{i}]", fail)
                               for i, u in enumerate(_url_list(value, key, fail)))
        if not channels[name]:
            raise fail(key, "is empty: list at least one URL")

    routes_raw = raw.get("routes", {})
    if not isinstance(routes_raw, dict):
        raise fail("routes", "must be a table of kind-or-severity = [channels or URLs]")
    routes: dict[str, tuple[str, ...]] = {}
    for name, value in routes_raw.items():
        key = f"routes.{name}"
        if name not in KIND_SEVERITY and name not in SEVERITIES:
            raise fail(key, f"unknown kind or severity (kinds: {', '.join(KINDS)}; "
                            f"severities: {', '.join(SEVERITIES)})")
        if name in NOT_RAISED_YET:
            raise fail(key, f"nothing raises {name} yet ({NOT_RAISED_YET[name]}); a route for it would never "
                            "fire, so it is refused rather than silently kept")
        resolved: dict[str, None] = {}
        for i, item in enumerate(_url_list(value, key, fail)):
            if "://" in item:
                resolved.setdefault(_check_url(_expand(item, f"{key}[{i}]", fail), f"{key}[{i}]", fail))
            elif item in channels:
                for url in channels[item]:
                    resolved.setdefault(url)
            else:
                raise fail(f"{key}[{i}]", f"{item!r} is neither a URL nor a channel in [alerts.channels]"
                                          f" (channels: {', '.join(channels) or 'none'})")
        routes[name] = tuple(resolved)

    max_per_hour = raw.get("max_per_hour", DEFAULT_MAX_PER_HOUR)
    if isinstance(max_per_hour, bool) or not isinstance(max_per_hour, int) or max_per_hour < 0:
        raise fail("max_per_hour", f"must be a whole number >= 0 (0 = no limit), not {max_per_hour!r}")
    retries = raw.get("retries", DEFAULT_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 1 <= retries <= 10:
        raise fail("retries", f"must be a whole number of attempts from 1 to 10, not {retries!r}")
    timeout = _seconds(raw.get("timeout", DEFAULT_TIMEOUT), "timeout", fail)
    if not 0 < timeout <= 300:
        raise fail("timeout", "must be more than 0 and at most 300 seconds")
    percent = raw.get("disk_low_percent", DEFAULT_DISK_LOW_PERCENT)
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent < 100:
        raise fail("disk_low_percent", f"must be a percentage from 0 to 100 (0 = off), not {percent!r}")
    disk_low_free = None
    if "disk_low_free" in raw:
        try:
            disk_low_free = parse_size(raw["disk_low_free"])
        except ValueError as exc:
            raise fail("disk_low_free", str(exc)) from None
    stalled_after, stalled_on = None, True
    if raw.get("stalled_after") == "off":
        stalled_on = False
    elif "stalled_after" in raw:
        stalled_after = _seconds(raw["stalled_after"], "stalled_after", fail)
        if stalled_after <= 0:
            raise fail("stalled_after", "must be a duration > 0 such as \"2h\"")
    return AlertsConfig(tuple(dict.fromkeys(urls)), channels, routes, max_per_hour, retries, timeout,
                        float(percent), disk_low_free, stalled_after, stalled_on)


def _seconds(value: Any, key: str, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise fail(key, f"must be a duration such as \"30s\", \"2h\" or a number of seconds, not {value!r}")
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise fail(key, str(exc)) from None


def _read_urls_file(path: str, fail) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise fail("urls_file", f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail("urls_file", f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    urls = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            urls.append(_check_url(_expand(line, f"urls_file ({path} line {n})", fail),
                                   f"urls_file ({path} line {n})", fail))
    return urls


# --- secrets in logs and on disk ------------------------------------------------------------------------

_SECRET_QUERY = re.compile(r"(pass|token|key|secret|auth|sig|webhook|apikey)", re.IGNORECASE)
_TOKENISH = re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9_\-]{16,}$")


def mask_url(url: str) -> str:
    """A URL safe for logs: scheme, user and host (or a token's first 4 characters), nothing else.

    ``mailto://bob:hunter2@smtp.example.com/x?to=a`` -> ``mailto://bob:****@smtp.example.com/...``;
    ``slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnla`` -> ``slack://T1JJ...``. Deliberately coarse: apprise
    knows which path segments of which scheme are tokens, but this runs where apprise is not imported,
    and showing too little beats leaking a token into the journal.
    """
    try:
        parts = urlsplit(url)
        scheme, netloc = parts.scheme, parts.netloc
    except ValueError:
        return "<unparseable URL>"
    user, _, hostport = netloc.rpartition("@")
    masked_user = ""
    if user:
        name, has_password, _ = user.partition(":")
        masked_user = (name if not _TOKENISH.match(name) else name[:4] + "...") + (":****" if has_password else "")
        masked_user += "@"
    name, colon, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if colon and not port.isdigit():  # "bot-id:token" (telegram) is a credential, not host:port
        host = hostport[:4] + "..."
    else:
        host = (name if "." in name or name == "localhost" or not _TOKENISH.match(name) else name[:4] + "...")
        host += f":{port}" if colon else ""
    rest = "/..." if (parts.path.strip("/") or parts.query) else ""
    return f"{scheme}://{masked_user}{host}{rest}"


def has_literal_secret(url: str) -> bool:
    """Does this URL carry a credential in the clear (a password, a token in path or query)?

    A heuristic, by design on the cautious side: a password in the user part, a query parameter named
    like a secret, or a path/host segment that looks like a token (16+ letters and digits).
    """
    if _ENV.search(url):
        return False  # comes from the environment, not from the file
    try:
        parts = urlsplit(url)
    except ValueError:
        return True
    user = parts.netloc.rpartition("@")[0]
    if ":" in user:
        return True
    if any(_SECRET_QUERY.search(k) and v for k, v in parse_qsl(parts.query)):
        return True
    segments = [*parts.netloc.rpartition("@")[2].split(":"), *parts.path.split("/")]
    return any(_TOKENISH.match(s) for s in segments if s)


def secret_exposure_warning(config_path: str, raw: dict[str, Any] | None) -> str | None:
    """A warning when a config file readable by group or others holds literal secrets in ``[alerts]``.

    ``raw`` is the ``[alerts]`` table or the whole parsed config (then its ``alerts`` table is used).
    Also warns when ``urls_file`` itself is readable by group or others (it exists to hold secrets).
    Returns ``None`` when there is nothing to say (or the file cannot be stat'ed: load reports that).
    """
    if raw and isinstance(raw.get("alerts"), dict):  # "alerts" is no key of [alerts]: the whole config
        raw = raw["alerts"]
    if not raw:
        return None
    messages = []
    try:
        mode = os.stat(config_path).st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        literal: list[str] = []
        for key, value in (("urls", raw.get("urls")),
                           *((f"channels.{k}", v) for k, v in (raw.get("channels") or {}).items()),
                           *((f"routes.{k}", v) for k, v in (raw.get("routes") or {}).items())):
            if isinstance(value, list):
                literal += [f"alerts.{key}[{i}]" for i, u in enumerate(value)
                            if isinstance(u, str) and "://" in u and has_literal_secret(u)]
        if literal:
            messages.append(
                f"{config_path} is readable by {_who(mode)} and holds credentials in {', '.join(literal)}: "
                f"use ${{ENV_VAR}} in the URL (e.g. systemd EnvironmentFile=) or alerts.urls_file, "
                f"or chmod 600 {config_path}")
    urls_file = raw.get("urls_file")
    if isinstance(urls_file, str):
        try:
            fmode = os.stat(os.path.expanduser(urls_file)).st_mode
        except OSError:
            fmode = 0
        if fmode & (stat.S_IRGRP | stat.S_IROTH):
            messages.append(f"alerts.urls_file {urls_file} is readable by {_who(fmode)}: chmod 600 {urls_file}")
    return "; ".join(messages) or None


def _who(mode: int) -> str:
    return "others" if mode & stat.S_IROTH else "its group"
