"""``[watch.mirror]``: where complete checkpoints are copied, and how the copy is proven.

Read from ``[[watch]]``'s ``[watch.mirror]`` table (``WatchConfig.mirror``; the service's mirror sink,
``mirror.service``, copies for the watches that have it); ``ckptwatch mirror`` builds the same section
from its flags. Only keys that the copy honours are accepted: a bandwidth cap (``max_rate``) comes back
with the token bucket that implements it (docs/mirror-todo.md).

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
- ``mirror_hazards = false``: a complete checkpoint with a blocking resume hazard (one whose resume would
  load the wrong weights) is not mirrored, with the reason; ``true`` mirrors it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptwatch.config.kinds import Boolean, OneOf, Text, Whole
from ckptwatch.config.reader import setting


@dataclass(frozen=True, kw_only=True)
class MirrorConfig:
    to: str = setting(Text("a directory or an s3:// URL to copy checkpoints to"),
                      doc='where copies go, e.g. "/backup/ckpts"')
    endpoint_url: str | None = setting(Text("an http(s) URL of an S3-compatible endpoint"), default=None)
    verify: str = setting(OneOf("size", "full"), default="size")
    parallel: int = setting(Whole(1, 64), default=2)
    mirror_hazards: bool = setting(Boolean(), default=False)

