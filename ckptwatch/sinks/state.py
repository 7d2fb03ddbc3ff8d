"""The state sink: record each run's verdicts and log each change of verdict once, across restarts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckptwatch.findings import hazard_json, problem_json
from ckptwatch.sinks.base import Sink

if TYPE_CHECKING:
    from ckptwatch.config import WatchConfig
    from ckptwatch.model import RunReport
    from ckptwatch.state import StateStore


class StateSink(Sink):
    """First in the row: the store decides what "changed" means, so ``checkpoint_judged`` is logged
    once per change of verdict, even after ``kill -9``. It keeps no memory of its own in the process."""

    name = "state store"

    def __init__(self, store: StateStore, log: Any) -> None:
        self.store = store
        self.log = log

    def judged(self, watch: WatchConfig, run: RunReport, now: float) -> float | None:
        mirror_to = watch.mirror.to if watch.mirror is not None else None  # status shows its lag
        for change in self.store.record(run, now, mirror_to=mirror_to):
            v = change.verdict
            self.log.info("checkpoint_judged", run=run.root, checkpoint=v.path, step=v.step,
                          status=v.status.value, previous=change.previous_status,
                          problems=[problem_json(p) for p in v.problems],
                          hazards=[hazard_json(h) for h in v.hazards])
        return None
