"""Optional Prometheus endpoint on 127.0.0.1: the per-run gauges a Grafana panel wants.

Off unless ``service.metrics_port`` is set. A custom collector reads the daemon's latest snapshot at
scrape time, so "seconds since the last complete checkpoint" is always current and nothing is
recomputed on the service's hot path. Bound to loopback only: the numbers name paths on the box.

Runs of watches with ``[watch.mirror]`` also get the mirror's lag (``mirror.lag``: steps, and seconds the
newest complete checkpoint has waited without a committed copy) and the newest committed copy's step,
read from the mirror sink's positions at scrape time, so a commit shows at the next scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from ckptwatch.mirror.lag import Position, mirror_lag
from ckptwatch.model import RunReport, Status


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    root: str
    layout: str
    newest_complete_step: int | None
    newest_complete_mtime: float | None
    counts: dict[str, int]
    bytes_on_disk: int
    resume_ratio: float | None = None  # loss after / before the run's last judged resume


def snapshot(run: RunReport, resume_ratio: float | None = None) -> RunSnapshot:
    counts = {s.value: sum(1 for v in run.checkpoints if v.status is s) for s in Status}
    newest = run.newest_complete
    return RunSnapshot(run.root, run.layout, newest.step if newest else None,
                       newest.newest_mtime if newest else None, counts,
                       sum(v.bytes for v in run.checkpoints), resume_ratio)


class _Collector:
    def __init__(self, source: Callable[[], Mapping[str, RunSnapshot]],
                 mirror: Callable[[], Mapping[str, Position]] | None = None) -> None:
        self.source = source
        self.mirror = mirror

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import GaugeMetricFamily

        runs = list(self.source().values())
        step = GaugeMetricFamily("ckptwatch_newest_complete_step", "Step of the newest complete checkpoint",
                                 labels=["run", "layout"])
        age = GaugeMetricFamily("ckptwatch_seconds_since_complete_checkpoint",
                                "Seconds since the newest complete checkpoint was written", labels=["run"])
        count = GaugeMetricFamily("ckptwatch_checkpoints", "Checkpoints by status", labels=["run", "status"])
        size = GaugeMetricFamily("ckptwatch_bytes_on_disk", "Bytes held by the run's checkpoints",
                                 labels=["run"])
        ratio = GaugeMetricFamily("ckptwatch_last_resume_loss_ratio",
                                  "Loss after / before the run's last resume (about 1 when it resumed right)",
                                  labels=["run"])
        now = time.time()
        for r in runs:
            if r.newest_complete_step is not None:
                step.add_metric([r.root, r.layout], r.newest_complete_step)
            if r.newest_complete_mtime is not None:
                age.add_metric([r.root], max(0.0, now - r.newest_complete_mtime))
            for status, n in r.counts.items():
                count.add_metric([r.root, status], n)
            size.add_metric([r.root], r.bytes_on_disk)
            if r.resume_ratio is not None:
                ratio.add_metric([r.root], r.resume_ratio)
        yield from (step, age, count, size, ratio)
        yield from self._mirror(now)

    def _mirror(self, now: float) -> Iterator[object]:
        from prometheus_client.core import GaugeMetricFamily

        lag_steps = GaugeMetricFamily("ckptwatch_mirror_lag_steps", "Steps of the newest complete checkpoint "
                                      "beyond the newest committed copy (0: mirrored)", labels=["run"])
        lag_seconds = GaugeMetricFamily("ckptwatch_mirror_lag_seconds", "Seconds the newest complete "
                                        "checkpoint has waited without a committed copy (0: mirrored)",
                                        labels=["run"])
        committed = GaugeMetricFamily("ckptwatch_mirror_newest_committed_step",
                                      "Step of the newest checkpoint with a committed copy", labels=["run"])
        for root, p in (self.mirror() if self.mirror else {}).items():
            lag = mirror_lag(p.complete, p.committed, now)
            if lag is not None and lag.steps is not None:
                lag_steps.add_metric([root], lag.steps)
            if lag is not None and lag.seconds is not None:
                lag_seconds.add_metric([root], lag.seconds)
            if p.committed is not None and p.committed.step is not None:
                committed.add_metric([root], p.committed.step)
        yield from (lag_steps, lag_seconds, committed)


class _PollCollector:
    """What each watched root's poller costs the filesystem: its stat and listdir calls so far."""

    def __init__(self, source: Callable[[], Mapping[str, tuple[int, int]]]) -> None:
        self.source = source

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily

        stats = CounterMetricFamily("ckptwatch_poll_stats", "stat calls the polling observer made",
                                    labels=["root"])
        listdirs = CounterMetricFamily("ckptwatch_poll_listdirs", "Directory listings the polling observer "
                                       "made", labels=["root"])
        for root, (n_stat, n_list) in self.source().items():
            stats.add_metric([root], n_stat)
            listdirs.add_metric([root], n_list)
        yield from (stats, listdirs)


def serve(port: int, source: Callable[[], Mapping[str, RunSnapshot]],
          mirror: Callable[[], Mapping[str, Position]] | None = None,
          polls: Callable[[], Mapping[str, tuple[int, int]]] = dict) -> object:
    """Start the endpoint on 127.0.0.1:``port``; returns the server (``shutdown()`` to stop). ``mirror``:
    the mirror sink's positions per run (the lag gauges); ``polls``: the pollers' call counts."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(source, mirror))
    registry.register(_PollCollector(polls))
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server
