"""``[[watch]]``: one watched root (a run dir, or a dir of run dirs) and its sub-tables.

Defaults: ``layout = "auto"`` (the registry recognises the framework), ``expected_ranks`` unset
(inferred from metadata or sibling checkpoints), ``observer = "auto"`` (polling on network and
parallel filesystems, where inotify sees no remote writes; inotify elsewhere), ``latest_good = false``
(the service writes into a run dir only when asked), and the loss watch on with the defaults of
``[watch.loss]``. ``[watch.retention]`` and ``[watch.mirror]`` are off unless their table is present.

A sub-table of ``[[watch]]`` (``[watch.loss]``) is one field here whose kind is ``Table(TheSection)``;
see the package docstring for the steps.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ckptwatch.config.kinds import Boolean, Number, OneOf, Path, Table, Whole
from ckptwatch.config.loss import LossSettings
from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.config.reader import Location, setting
from ckptwatch.config.retention import RetentionConfig
from ckptwatch.layouts.registry import NAMES


@dataclass(frozen=True, kw_only=True)
class WatchConfig:
    path: str = setting(Path("a directory path", empty=False, absolute=True), doc="the output dir to watch")
    layout: str = setting(OneOf("auto", *NAMES), default="auto")
    expected_ranks: int | None = setting(Whole(1), default=None)
    observer: str = setting(OneOf("auto", "inotify", "polling"), default="auto")  # used by the service only
    # Polling (observer "polling", "auto" on a network filesystem, or the fallback from inotify): how often
    # the run dirs are looked at, and the most stat + listdir calls per second the poller may make.
    poll_interval: float = setting(Number(0.0, above=True, noun="a number of seconds"), default=5.0)
    max_stats_per_second: float | None = setting(Number(0.0, above=True, noun="a number of calls per second"),
                                                 default=None)
    latest_good: bool = setting(Boolean(), default=False)  # the service keeps a ckptwatch-latest pointer
    loss: LossSettings | None = setting(Table(LossSettings, "a table ([watch.loss])", switch="enabled"),
                                        default=LossSettings())  # None: [watch.loss] enabled = false
    retention: RetentionConfig | None = setting(Table(RetentionConfig, "a table ([watch.retention])"),
                                                default=None)  # None: no retention, nothing is deleted
    mirror: MirrorConfig | None = setting(Table(MirrorConfig, "a table ([watch.mirror])"),
                                          default=None)  # None: nothing is copied off the box

    def checked(self, at: Location) -> WatchConfig:
        if self.mirror is not None and "://" not in self.mirror.to and not os.path.isabs(self.mirror.to):
            raise at.key("mirror").key("to").error(
                f"{self.mirror.to!r} is a relative path: give an absolute directory or an s3:// URL")
        if self.mirror is not None and _inside(self.mirror.to, self.path):
            raise at.key("mirror").key("to").error(
                f"{self.mirror.to} is inside the watched root {self.path}: its copies would be judged as "
                "checkpoints of the run; choose a directory outside it")
        if self.mirror is not None:  # runs are named by their path below the watched root
            return dataclasses.replace(self, mirror=dataclasses.replace(self.mirror, runs_under=self.path))
        return self


def _inside(to: str, root: str) -> bool:
    """Is ``to`` (a path; never a URL) the root or below it?"""
    if "://" in to:
        return False
    to, root = os.path.abspath(to), os.path.abspath(root)
    return to == root or to.startswith(root.rstrip(os.sep) + os.sep)
