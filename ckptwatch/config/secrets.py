"""Alert URLs hold secrets: ``${ENV}`` expansion at load, masking for logs, exposure warnings.

No URL is ever logged or put in an error message unmasked: use ``mask_url``. A config may be
world-readable (the README installs it 0644), so ``secret_exposure_warning`` says when it holds
literal credentials and how to move them out (``${ENV}`` from systemd's ``EnvironmentFile=``, or
``alerts.urls_file``).
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ckptwatch.config.reader import Location

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")


def expand_env(value: str, at: Location) -> str:
    """``${NAME}`` -> the environment variable's value; an unset variable is an error naming it."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise at.error(f"environment variable {name} is not set")
        return os.environ[name]

    return _ENV.sub(sub, value)


def check_url(url: str, at: Location) -> str:
    """``url`` if it looks like ``scheme://...``; the error never echoes it (it may be a secret)."""
    if not _URL.match(url):
        raise at.error("is not a URL (expected scheme://..., e.g. mailto://, slack://, json://)")
    return url


def read_urls_file(path: str, at: Location) -> list[str]:
    """The URLs in ``path``, one a line, ``#`` comments and blank lines skipped, ``${ENV}`` expanded."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise at.error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise at.error(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    urls = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            where = Location(at.source, f"{at.path} ({path} line {n})")
            urls.append(check_url(expand_env(line, where), where))
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
        masked_user = name if not _TOKENISH.match(name) else name[:4] + "..."
        masked_user += (":****" if has_password else "") + "@"
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
            messages.append(f"alerts.urls_file {urls_file} is readable by {_who(fmode)}: "
                            f"chmod 600 {urls_file}")
    return "; ".join(messages) or None


def _who(mode: int) -> str:
    return "others" if mode & stat.S_IROTH else "its group"
