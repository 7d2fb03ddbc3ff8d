"""``[service]``: how the service (and ``once``) judges time, where it keeps state, how it logs.

Defaults and why (``settle_seconds``, ``stale_after`` and the two per-file limits are written in
``defaults.py``, which ``latest`` reads without building this section):

- ``settle_seconds = 60``: quiet time before a checkpoint is judged; anything modified more recently is
  ``in_progress``, never ``incomplete``.
- ``stale_after = "30m"``: a temp/staging marker untouched this long belongs to a killed save, and an
  incomplete newest checkpoint is alerted once it stayed so this long (30 min: a slow rank is not a page).
- ``state_dir = ""``: ``default_state_dir()`` (``/var/lib/ckptwatch`` as root under systemd's
  ``StateDirectory``, else ``~/.local/state/ckptwatch``).
- ``rescan_seconds = 600``: the whole-root pass on a timer, the safety net under events (an inotify
  overflow is handled on its own). Over 100,000 files the pass costs 2-3 s of CPU on 2 cores:
  0.7-1.0 % of a core at 300 s (the idle target is 1 %), 0.35-0.5 % at 600 s (bench/README section 4).
- ``metrics_port = 0``: off; otherwise a Prometheus endpoint on 127.0.0.1.
- ``max_seconds_per_file = 5`` and ``max_memory_per_file = "1G"``: what reading one file may cost
  (DESIGN.md invariant 8). The structural check of a real file costs milliseconds and a few MB (a
  10 MB safetensors header of 50,000 tensors: ~0.3 s, ~60 MB); a file that needs more is hostile or
  pathological and becomes ``exceeds_limits``, not a hang or an exhausted machine. Streaming reads of
  ``--deep`` are bounded by the file's size, not by these, and not stopped by them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckptwatch.config import defaults
from ckptwatch.config.kinds import Duration, Number, OneOf, Path, Size, Whole
from ckptwatch.config.reader import Location, setting


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    settle_seconds: float = setting(Number(0.0, noun="a number of seconds"), default=defaults.SETTLE_SECONDS)
    stale_after: float = setting(Duration(), default=defaults.STALE_AFTER)
    state_dir: str = setting(Path("a directory path"), default="")
    log_format: str = setting(OneOf("auto", "json", "console"), default="auto")
    rescan_seconds: float = setting(Number(0.0, above=True, noun="a number of seconds"), default=600.0)
    metrics_port: int = setting(Whole(0, 65535, why="a TCP port (1-65535) or 0 for off"), default=0)
    max_seconds_per_file: float = setting(Number(0.0, above=True, noun="a number of seconds"),
                                         default=defaults.MAX_SECONDS_PER_FILE)
    max_memory_per_file: int = setting(Size(), default=defaults.MAX_MEMORY_PER_FILE)

    def checked(self, at: Location) -> ServiceConfig:
        """Below 16 MiB not even a real checkpoint's headers can be read."""
        if self.max_memory_per_file < MIN_MEMORY_PER_FILE:
            raise at.key("max_memory_per_file").error(
                f"must be at least 16M, not {self.max_memory_per_file} bytes")
        return self


MIN_MEMORY_PER_FILE = 16 << 20
