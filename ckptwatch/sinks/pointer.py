"""The resume-pointer sink: keep ``ckptwatch-latest`` naming the run's newest resumable checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckptwatch import pointer
from ckptwatch.sinks.base import Sink, SinkFault

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig
    from ckptwatch.model import RunReport


class PointerSink(Sink):
    """Only for watches with ``latest_good = true``. Stateless: the pointer file itself is the memory."""

    name = "resume pointer"

    def __init__(self, log: Any) -> None:
        self.log = log

    def judged(self, watch: WatchConfig, run: RunReport, now: float) -> float | None:
        target = run.newest_resumable
        if not watch.latest_good or target is None or pointer.current(run.root) == target.path:
            return None
        try:
            pointer.update(run.root, target.path, target.step, run.layout, now)
        except OSError as exc:
            raise SinkFault(f"{exc.strerror or exc}",
                            "retrying at the next judgement; with systemd, add the run root to "
                            "ReadWritePaths=") from None
        self.log.info("resume_pointer_updated", run=run.root, checkpoint=target.path, step=target.step)
        return None
