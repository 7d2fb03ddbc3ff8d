"""``[watch.mirror]``: where complete checkpoints are copied, and how the copy is proven.

Read from ``[[watch]]``'s ``[watch.mirror]`` table (``WatchConfig.mirror``; the service's mirror sink,
``mirror.service``, copies for the watches that have it); ``ckptwatch mirror`` builds the same section
from its flags (``--max-rate`` for ``max_rate``). Only keys that the copy honours are accepted.

Keys, defaults and why:

- ``to`` (required): a local or mounted directory, or ``s3://bucket/prefix`` (S3-compatible object
  storage, ``mirror.fsspec_target``). Copies live at ``<to>/<run>/<checkpoint>/``.
- ``endpoint_url``: the S3 endpoint (``http://minio:9000``) for an ``s3://`` ``to``; unset, botocore's
  standard ``AWS_ENDPOINT_URL`` / AWS config applies. Credentials never go in the config: the
  environment (the unit's EnvironmentFile) or ``~/.aws``.
- ``verify = "size"``: before the commit marker, the copy's file sizes are checked. The hashes were
  computed from the bytes read and written in the same pass, so a size check catches a short write at
  the cost of one listing. ``"full"`` re-reads and re-hashes the whole copy before committing it: twice
  the I/O, for a target whose writes one does not trust (a flaky mount).
- ``parallel = 2``: files copied at once. Both the hash and the reads/writes release the GIL, and this
  machine kind has two cores; object stores want more (a later default for s3 URLs).
- ``max_rate``: off. A bandwidth cap on what one mirror writes to its target, in bytes per second: a
  number, or a size as ``min_free`` takes it (``"100MB"``, ``"1GiB"``; binary units, so ``"100MB"`` is
  100 MiB/s; a trailing ``"/s"`` is allowed). One token bucket (``mirror.throttle``) is shared by the
  ``parallel`` copies, so the cap is for the mirror as a whole; up to one second of it may go at once.
  For a backup link shared with the training job's own traffic. Reads (``verify = "full"``) are not
  capped.
- ``mirror_hazards = false``: a complete checkpoint with a blocking resume hazard (one whose resume would
  load the wrong weights) is not mirrored, with the reason; ``true`` mirrors it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptwatch.config.kinds import Boolean, OneOf, Text, Whole, parse_size
from ckptwatch.config.reader import Location, setting


def parse_rate(value: str | int) -> int:
    """``"100MB"``, ``"1GiB/s"``, ``50000000`` -> bytes per second (``parse_size``'s units). ValueError
    for anything else, zero included (a cap of nothing would stop every copy)."""
    text = value.strip()[:-2] if isinstance(value, str) and value.strip().lower().endswith("/s") else value
    try:
        rate = parse_size(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate (use e.g. 100MB, 1GiB, 50M/s, or a number of bytes "
                         "per second)") from None
    if rate < 1:
        raise ValueError(f"{value!r} is not a rate above 0 bytes per second (remove max_rate for no cap)")
    return rate


class Rate:
    """Bytes per second: a number or a size (``parse_rate``)."""

    __slots__ = ()

    def read(self, value: Any, at: Location) -> int:
        try:
            return parse_rate(value)
        except ValueError as exc:
            raise at.error(str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class MirrorConfig:
    to: str = setting(Text("a directory or an s3:// URL to copy checkpoints to"),
                      doc='where copies go, e.g. "/backup/ckpts"')
    endpoint_url: str | None = setting(Text("an http(s) URL of an S3-compatible endpoint"), default=None)
    verify: str = setting(OneOf("size", "full"), default="size")
    parallel: int = setting(Whole(1, 64), default=2)
    max_rate: int | None = setting(Rate(), default=None)  # bytes per second
    mirror_hazards: bool = setting(Boolean(), default=False)
    # Not a key: the directory runs are named from (``copy.run_name``): the watched root, filled in by
    # ``WatchConfig.checked``, or the PATH given to ``ckptwatch mirror``.
    runs_under: str = ""

