"""Which target a ``to`` value names: a URL with a scheme is object storage (``FsspecTarget``), anything
else a local or mounted directory (``LocalTarget``).

One small function so the CLI and, later, the service's mirror sink choose the same way. fsspec/s3fs
are imported only when a URL is given.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `verify FILE` asks is_url before anything else; the targets load when one is made
    from ckptwatch.mirror.target import Target

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(value: str) -> bool:
    """Does ``value`` name a URL (``s3://...``) rather than a path?"""
    return bool(_SCHEME.match(value))


def target_for(to: str, *, endpoint_url: str | None = None) -> Target:
    """The target ``to`` names. ``fsspec_target.UnsupportedTarget`` (a ValueError) for a URL it cannot
    keep copies in; ``endpoint_url`` applies to URLs only (``AWS_ENDPOINT_URL`` when None)."""
    if is_url(to):
        from ckptwatch.mirror.fsspec_target import FsspecTarget

        return FsspecTarget(to, endpoint_url=endpoint_url)
    from ckptwatch.mirror.target import LocalTarget

    return LocalTarget(os.path.abspath(to))
