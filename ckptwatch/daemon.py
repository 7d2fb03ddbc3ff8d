"""``ckptwatch run``: the long-running driver of the same engine ``once`` uses.

It only adds triggers, memory, signals and health (STYLE.md 6): observers (``observers.py``) are
started before the catch-up scan (so nothing written during the scan is missed), an event marks its
run dirty (or its root, when the event is outside every known run), a run is judged
``settle_seconds`` after the first event that dirtied it, and every root is rescanned on a timer and
judged whole after an inotify overflow (which watchdog reports only in its log).

What happens to a verdict is not the daemon's business: each run report goes to a fixed row of sinks
(``build_row``), every call through one fault reporter. Nothing but SIGTERM stops the service.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ckptwatch.config import Config, WatchConfig, load_config
from ckptwatch.errors import ConfigError
from ckptwatch.model import RunReport
from ckptwatch.notify import Notifier
from ckptwatch.observers import Observers
from ckptwatch.passes import Engine, Judge, PassResult, settled_at
from ckptwatch.sinks.base import Background, FaultReporter, Sink
from ckptwatch.state import StateStore, default_state_dir
from ckptwatch.watch import DirtyScopes, install_overflow_log

LOOP_MAX_SLEEP = 5.0
NO_WATCH = "watch: at least one [[watch]] table is needed for the service"  # startup and reload refuse it


def configure_logging(fmt: str) -> object:
    """structlog: JSON lines off a TTY (journald), a readable console on one. Returns a logger."""
    import structlog

    json_out = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer = structlog.processors.JSONRenderer() if json_out else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    renderer],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger()


@dataclass(frozen=True)
class Row:
    """The sinks in delivery order, and the two the rest of the service talks to by name."""

    sinks: tuple[Sink, ...]
    alerts: object  # ServiceAlerts: also the fault reporter's channel


def build_row(config: Config, state: StateStore, state_dir: str, log: object, clock: Callable[[], float],
              faults: FaultReporter, background: Background, dirty: DirtyScopes,
              rejudge: Callable[[WatchConfig, str, float], RunReport | None],
              poll_counts: Callable[[], dict[str, tuple[int, int]]] = dict) -> Row:
    """state -> alerts -> resume pointer -> loss watch -> metrics -> mirror -> retention (DESIGN.md). A new
    sink is a line here. ``rejudge`` judges one run afresh from the disk (retention's re-check before
    deleting)."""
    from ckptwatch.alerts.service import ServiceAlerts
    from ckptwatch.losswatch.service import LossSink
    from ckptwatch.mirror.service import MirrorSink
    from ckptwatch.retention.service import RetentionSink
    from ckptwatch.sinks.metrics import MetricsSink
    from ckptwatch.sinks.pointer import PointerSink
    from ckptwatch.sinks.state import StateSink

    alerts = ServiceAlerts(config.alerts, os.path.join(state_dir, "state.sqlite"), clock, log,
                           stale_after=config.service.stale_after,
                           roots=tuple(w.path for w in config.watches))
    if not alerts.enabled:
        log.info("alerts_off", reason="no [alerts] channel configured")
    faults.alerts = alerts
    loss = LossSink(alerts=alerts, hazards_of=state.hazard_messages, faults=faults, background=background,
                    touched_since=dirty.touched_since, plots_dir=os.path.join(state_dir, "plots"), log=log)
    mirror = MirrorSink(alerts=alerts, faults=faults, background=background, log=log, clock=clock,
                        schedule=dirty.schedule, store=state)
    sinks = (StateSink(state, log), alerts, PointerSink(log), loss,
             MetricsSink(config.service.metrics_port, loss.resume_ratio, log,
                         mirror=lambda: mirror.positions, poll_counts=poll_counts),
             mirror,
             RetentionSink(alerts=alerts, faults=faults, background=background, rejudge=rejudge, log=log,
                           mirrored=mirror.is_committed, recheck=mirror.recheck))
    return Row(sinks, alerts)


JUDGING_ACTION = ("retrying at the next event or rescan; if it persists, run `ckptwatch once {root}` by hand "
                  "and report the error")


class _Taken:
    """A pass's runs as the daemon takes them: a whole-root pass judges each run as it is taken, so a
    fault of ours can come half-way; it ends the pass and is kept in ``fault`` (the runs delivered stay
    delivered; the rest are judged at the next pass), instead of escaping the loop."""

    def __init__(self, runs: Iterable[RunReport]) -> None:
        self._runs = iter(runs)
        self.fault: str | None = None

    def __iter__(self) -> Iterator[RunReport]:
        while True:
            try:
                run = next(self._runs)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - see the docstring
                self.fault = f"{type(exc).__name__}: {exc}"
                return
            yield run


@dataclass(slots=True)
class RunRecord:
    """The daemon's one record per known run: which watched root holds it."""

    watch_root: str


@dataclass
class Daemon:
    config_path: str
    config: Config
    notifier: Notifier = field(default_factory=Notifier.from_env)
    clock: Callable[[], float] = time.time
    engine: Engine = field(default_factory=Engine.default)

    def __post_init__(self) -> None:
        self.log = configure_logging(self.config.service.log_format)
        self.state_dir = self.config.service.state_dir or default_state_dir()
        self.state = StateStore.open_for_service(self.state_dir)  # one service per state dir, until close
        self.dirty = DirtyScopes(quiet=self.config.service.settle_seconds)
        self.faults = FaultReporter(self.log, None, self.clock)
        self.background = Background(self.dirty.wake)
        self.judge = Judge(self.engine, self.config.service, self.state.changed_paths)
        self.observers = Observers(self.dirty, self.clock, self.log, self.faults)
        self.runs: dict[str, RunRecord] = {}
        self.stopping = False
        self.reload_requested = False
        try:
            self.row = build_row(self.config, self.state, self.state_dir, self.log, self.clock, self.faults,
                                 self.background, self.dirty, self._fresh_run, self.observers.poll_counts)
        except BaseException:  # e.g. the alert ledger's file is corrupt: free the state dir's lock now
            self.background.close(0.1)
            self.state.close()
            raise
        self.next_tick: dict[int, float] = {}  # sink index -> when it wants its next tick
        self.next_rescan = float("inf")  # set by run() once the catch-up pass is done

    @property
    def alerts(self):  # noqa: ANN201 - ServiceAlerts
        return self.row.alerts

    def sink(self, name: str) -> Sink:
        return next(s for s in self.row.sinks if s.name == name)

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        overflow_log = install_overflow_log(self.observers.on_overflow)
        self.observers.start(self.config.watches, self.judge.run_index)
        self._start_sinks()
        for w in self.config.watches:  # catch-up: what was written while the service was down
            self.judge_watch(w)
        self.log.info("service_ready", roots=[w.path for w in self.config.watches],
                      checkpoints=self.state.counts())
        self.notifier.send("READY=1", f"STATUS={self._status_line()}")
        self.next_rescan = self.clock() + self.config.service.rescan_seconds
        while not self.stopping:
            self.dirty.wake.wait(timeout=self.step())
            self.dirty.wake.clear()
        self.notifier.send("STOPPING=1")
        self.log.info("service_stopping")
        self.observers.stop()
        self.close(timeout=5.0)  # queued alerts get 5 s; TimeoutStopSec= leaves room for that
        for name in ("watchdog.observers.inotify", "watchdog.observers.inotify_c"):
            logging.getLogger(name).removeHandler(overflow_log)
        return 0

    def step(self) -> float:
        """One turn of the loop: due passes, the rescan, health checks, sink ticks. Returns how long to
        sleep (an event wakes the loop earlier)."""
        if self.reload_requested:
            self.faults.call("config reload", self._reload)
        now = self.clock()
        for root, scope in self.dirty.take_due(now):
            w = self._watch_for(root)
            if w is not None:
                self.judge_watch(w, scope)
        if now >= self.next_rescan:
            for w in self.config.watches:
                self.judge_watch(w)
            self.next_rescan = now + self.config.service.rescan_seconds
        self.faults.call("inotify overflow handling", self.observers.handle_overflows)
        self.faults.call("observer health check", self.observers.check, self.judge.run_index)
        self.tick(now)
        self.faults.call("background results", self.background.drain)
        ping = self.notifier.watchdog_interval()
        if ping is not None:
            self.notifier.send("WATCHDOG=1")
        due = self.dirty.next_due()
        waits = [self.next_rescan - now, LOOP_MAX_SLEEP, *(t - now for t in self.next_tick.values())]
        waits += [due - now] if due is not None else []
        waits += [ping] if ping is not None else []
        return max(0.05, min(waits))

    def close(self, timeout: float = 5.0) -> None:
        """Abort long work in flight (``Sink.stop``: the mirror's upload), stop the background worker and
        every sink, then the state store."""
        for sink in self.row.sinks:
            self.faults.call(f"stopping {sink.name}", sink.stop)
        self.background.close(timeout)
        self.background.drain()
        for sink in self.row.sinks:
            self.faults.call(f"closing {sink.name}", sink.close, timeout)
        self.state.close()

    def _start_sinks(self) -> None:
        now = self.clock()
        for sink in self.row.sinks:
            self.faults.call(sink.name, sink.start, now)

    def tick(self, now: float) -> None:
        """Each sink's periodic work, when it asked for it (a sink that failed or said nothing: 5 s later)."""
        for i, sink in enumerate(self.row.sinks):
            if type(sink).tick is not Sink.tick and now >= self.next_tick.get(i, 0.0):
                again = self.faults.call(sink.name, sink.tick, now)
                self.next_tick[i] = again if again is not None else now + LOOP_MAX_SLEEP

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True
        for sink in self.row.sinks:  # at once, not after the pass in progress: a copy stops at its next write
            try:
                sink.stop()
            except Exception:  # noqa: BLE001, S110 - close() calls it again through the fault reporter
                pass
        self.dirty.wake.set()

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_requested = True
        self.dirty.wake.set()

    def _reload(self) -> None:
        """A new config: new watchers and a new row of sinks; every root is judged again."""
        self.reload_requested = False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.log.error("config_reload_failed", error=str(exc), keeping="the previous config")
            return
        if not new.watches:  # startup refuses this config (cmd_run): a service that watches nothing
            self.log.error("config_reload_failed", error=f"{self.config_path}: {NO_WATCH}",
                           keeping="the previous config")
            return
        self.observers.stop()
        for sink in self.row.sinks:
            self.faults.call(f"closing {sink.name}", sink.close, 5.0)
        self.config = new
        self.dirty.quiet = new.service.settle_seconds
        self.judge = Judge(self.engine, new.service, self.state.changed_paths)
        self.runs.clear()
        self.next_tick.clear()
        self.row = build_row(new, self.state, self.state_dir, self.log, self.clock, self.faults,
                             self.background, self.dirty, self._fresh_run, self.observers.poll_counts)
        self._start_sinks()
        self.observers.start(new.watches, self.judge.run_index)
        now = self.clock()
        for w in new.watches:  # events during the gap are lost, and added roots were never judged
            self.dirty.touch(w.path, now)
        self.log.info("config_reloaded", roots=[w.path for w in new.watches])

    def forget_run(self, run_root: str) -> None:
        """The run is gone: its record, its debounce memory and every sink's memory of it, at once."""
        record = self.runs.pop(run_root, None)
        if record is not None:
            self.dirty.forget(record.watch_root, run_root)
        for sink in self.row.sinks:
            self.faults.call(f"{sink.name} in {run_root}", sink.forget, run_root)

    def _fresh_run(self, watch: WatchConfig, run_root: str, now: float) -> RunReport | None:
        return self.judge.fresh_run(watch, run_root, now)

    def _watch_for(self, root: str) -> WatchConfig | None:
        return next((w for w in self.config.watches if w.path == root), None)

    # --- the pass and the row -----------------------------------------------------------------------

    def judge_watch(self, w: WatchConfig, scope: str | None = None) -> None:
        """One pass over a run (``scope``) or the whole watched root, then every report down the row."""
        if not os.path.isdir(w.path):
            return
        now = self.clock()
        for sink in self.row.sinks:
            self.faults.call(sink.name, sink.begin_pass, now)
        result = self.faults.call(
            f"judging {w.path}", self.judge.judge, w, scope, now, context={"root": w.path},
            action=JUDGING_ACTION.format(root=w.path))
        if result is not None:
            self._deliver(w, result, now)
        status = self.faults.call("state store", self._status_line)
        if status is not None:
            self.notifier.send(f"STATUS={status}")

    def _deliver(self, w: WatchConfig, result: PassResult, now: float) -> None:
        if result.whole:
            self.observers.set_runs(w.path, result.live)
            base = w.path.rstrip(os.sep) + os.sep
            remembered = set(self.runs).union(*(s.remembered() for s in self.row.sinks))
            for run_root in sorted(remembered):
                if (run_root == w.path or run_root.startswith(base)) and run_root not in result.live:
                    self.forget_run(run_root)
        judged = _Taken(result.runs)
        for run in judged:
            if (record := self.runs.get(run.root)) is None or record.watch_root != w.path:
                self.runs[run.root] = RunRecord(w.path)
            self.observers.judged(w.path, run)
            wake = [settled_at(run, self.config.service.settle_seconds, now)]
            for sink in self.row.sinks:
                wake.append(self.faults.call(f"{sink.name} in {run.root}", sink.judged, w, run, now,
                                             context={"run": run.root}))
            again = min((t for t in wake if t is not None), default=None)
            if again is not None:
                self.dirty.schedule(w.path, run.root, again)
        if judged.fault is not None:
            self.faults.report(f"judging {w.path}", judged.fault, JUDGING_ACTION.format(root=w.path),
                               root=w.path)
        elif result.whole:
            for sink in self.row.sinks:
                self.faults.call(sink.name, sink.root_judged, w, result.live, now)

    def _status_line(self) -> str:
        counts = self.state.counts()
        return (f"watching {len(self.config.watches)} roots; {counts.get('complete', 0)} complete, "
                f"{counts.get('incomplete', 0)} incomplete, {counts.get('corrupt', 0)} corrupt, "
                f"{counts.get('in_progress', 0)} in progress")
