"""``ckptwatch run``: the long-running driver of the same engine ``once`` uses.

It only adds triggers, memory, signals and health (STYLE.md 6): watches are registered before the
catch-up scan (so nothing written during the scan is missed), an event marks its run dirty (or its
root, when the event is outside every known run), a run is judged once no event touched it for
``settle_seconds``, every root is rescanned on a timer and judged whole after an inotify overflow
(which watchdog reports only in its log), dead observer threads are restarted, and verdicts go through
the state store so each change is logged exactly once, across restarts. A fault in one pass is logged
and the loop goes on: nothing but SIGTERM stops the service.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace

from ckptwatch.config import Config, WatchConfig, load_config
from ckptwatch.engine import check_root, check_run_dir
from ckptwatch.errors import ConfigError
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import Problem, Status, Verdict
from ckptwatch.notify import Notifier
from ckptwatch.state import StateStore, default_state_dir
from ckptwatch.watch import OVERFLOW_LIMIT, OVERFLOW_WINDOW_S, DirtyScopes, Watcher, choose_observer, install_overflow_log
from ckptwatch.vocabulary import full_message
from ckptwatch.writers import open_for_writing


DISK_CHECK_SECONDS = 60.0
LOSS_POLL_SECONDS = 5.0  # how often an active run's loss logs are read between passes
LOSS_ACTIVE_SECONDS = 600.0  # a run with a file event or new loss points this recent is active
LOSS_IDLE_SECONDS = 300.0  # how often the loss logs of quiet runs are looked at (a safety net: a resumed
# process creates files, an events file or a checkpoint, which make its run active)


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


@dataclass
class Daemon:
    config_path: str
    config: Config
    notifier: Notifier = field(default_factory=Notifier.from_env)
    clock: object = time.time

    def __post_init__(self) -> None:
        self.log = configure_logging(self.config.service.log_format)
        self.state_dir = self.config.service.state_dir or default_state_dir()
        self.state = StateStore(os.path.join(self.state_dir, "state.sqlite"))
        self.dirty = DirtyScopes(quiet=self.config.service.settle_seconds)
        self.overflows: list[tuple[float, str | None]] = []  # appended by watchdog's thread
        self.watchers: dict[str, Watcher] = {}
        self.stopping = False
        self.reload_requested = False
        self.runs: dict[str, object] = {}  # run root -> metrics.RunSnapshot, replaced whole per judgement
        self.caches: dict[str, dict] = {}  # per watched root: unchanged checkpoints are not re-read
        self.metrics_server = None
        self.run_bytes: dict[str, int] = {}  # per run: bytes of its newest complete checkpoint (the next save)
        self.loss_watchers: dict[str, object] = {}  # loss root -> losswatch.RunLossWatcher (offsets, windows)
        self.loss_runs: dict[str, tuple[str, str, tuple]] = {}  # run root -> (watch root, loss root, checkpoints)
        self.next_loss_poll = 0.0
        self.loss_grew: dict[str, float] = {}  # loss root -> when its last poll read new points
        self.run_index: dict[str, frozenset[str]] = {}  # watch root -> its runs (survives observer restarts)
        self.resume_ratio: dict[str, float] = {}  # run root -> ratio of its last judged resume (metrics)
        self.next_disk_check = 0.0
        self.alerts = self._make_alerts(self.config)

    def _guarded(self, component: str, step, *args) -> None:  # noqa: ANN001
        """Run one step of the loop; a fault is logged and alerted, and the loop goes on (invariant 5)."""
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 - nothing but SIGTERM stops the service
            error = f"{type(exc).__name__}: {exc}"
            self.log.error("service_error", component=component, error=error, action="retrying in the next loop")
            try:
                self.alerts.service_error(component, error, "retrying; if it persists, check the service's "
                                          "journal and report the error", now=self.clock())
            except Exception:  # noqa: BLE001, S110 - the alert path itself failing must not stop the loop
                pass

    def _make_alerts(self, config: Config):  # noqa: ANN202
        from ckptwatch.alerts.service import ServiceAlerts

        state_dir = config.service.state_dir or default_state_dir()
        alerts = ServiceAlerts(config.alerts, os.path.join(state_dir, "state.sqlite"), self.clock, self.log)
        if not alerts.enabled:
            self.log.info("alerts_off", reason="no [alerts] channel configured")
        return alerts

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        overflow_log = install_overflow_log(self._on_overflow)
        self._start_watchers()
        self._start_metrics()
        for w in self.config.watches:  # catch-up: what was written while the service was down
            self._judge(w)
        counts = self.state.counts()
        self.log.info("service_ready", roots=[w.path for w in self.config.watches], checkpoints=counts)
        self.notifier.send("READY=1", f"STATUS={self._status_line()}")
        next_rescan = self.clock() + self.config.service.rescan_seconds
        ping = self.notifier.watchdog_interval()
        while not self.stopping:
            if self.reload_requested:
                self._guarded("config reload", self._reload)
            now = self.clock()
            for root, scope in self.dirty.take_due(now):
                w = self._watch_for(root)
                if w is not None:
                    self._judge(w, scope)
            if now >= next_rescan:
                for w in self.config.watches:
                    self._judge(w)
                next_rescan = now + self.config.service.rescan_seconds
            self._guarded("inotify overflow handling", self._handle_overflows)
            self._guarded("observer health check", self._check_watchers)
            if now >= self.next_disk_check:
                self._guarded("disk space check", self._check_disks, now)
            if now >= self.next_loss_poll:
                self._guarded("loss watch", self._poll_active_loss, now)
            if ping is not None:
                self.notifier.send("WATCHDOG=1")
            due = self.dirty.next_due()
            wait = min(x for x in (next_rescan - now, (due - now) if due else None, ping, 5.0) if x is not None)
            self.dirty.wake.wait(timeout=max(0.05, wait))
            self.dirty.wake.clear()
        self.notifier.send("STOPPING=1")
        self.log.info("service_stopping")
        for w in self.watchers.values():
            w.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        self.alerts.close(timeout=5.0)  # queued alerts get 5 s; TimeoutStopSec= leaves room for that
        self.state.close()
        for name in ("watchdog.observers.inotify", "watchdog.observers.inotify_c"):
            __import__("logging").getLogger(name).removeHandler(overflow_log)
        return 0

    def _start_metrics(self) -> None:
        port = self.config.service.metrics_port
        if not port:
            return
        from ckptwatch.metrics import serve

        try:
            self.metrics_server = serve(port, lambda: dict(self.runs))
            self.log.info("metrics_listening", address=f"127.0.0.1:{port}")
        except OSError as exc:
            error = f"metrics endpoint on 127.0.0.1:{port}: {exc.strerror or exc}"
            self.log.error("service_error", error=error, action="running without metrics")
            self.alerts.service_error("metrics endpoint", error, "free the port or change service.metrics_port, "
                                      "then `systemctl reload ckptwatch`", now=self.clock())

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True
        self.dirty.wake.set()

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_requested = True
        self.dirty.wake.set()

    def _reload(self) -> None:
        self.reload_requested = False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.log.error("config_reload_failed", error=str(exc), keeping="the previous config")
            return
        for w in self.watchers.values():
            w.stop()
        self.watchers.clear()
        self.caches.clear()
        if new.alerts != self.config.alerts:
            self.alerts.close(timeout=5.0)
            self.config = new
            self.alerts = self._make_alerts(new)
        self.config = new
        self.dirty.quiet = new.service.settle_seconds
        self.loss_watchers.clear()  # [watch.loss] may have changed; offsets are re-read from the files
        kept = tuple(w.path for w in new.watches)
        self._forget_runs(lambda run: not any(run == r or run.startswith(r.rstrip(os.sep) + os.sep) for r in kept))
        self._start_watchers()
        now = self.clock()
        for w in new.watches:  # events during the gap are lost, and added roots were never judged
            self.dirty.touch(w.path, now)
        self.log.info("config_reloaded", roots=[w.path for w in new.watches])

    def _forget_runs(self, gone) -> None:  # noqa: ANN001 - predicate on a run root
        """Drop the per-run memory of runs that are gone (deleted, or under a root no longer watched)."""
        for table in (self.run_bytes, self.loss_runs, self.resume_ratio):
            for run in [r for r in table if gone(r)]:
                del table[run]
        self.runs = {r: snap for r, snap in self.runs.items() if not gone(r)}

    # --- watching ---------------------------------------------------------------------------------

    def _start_watchers(self) -> None:
        for w in self.config.watches:
            self._start_watcher(w)

    def _start_watcher(self, w: WatchConfig) -> None:
        if not os.path.isdir(w.path):
            if w.path not in self.watchers:
                self.log.warning("root_missing", root=w.path, action="waiting for it to appear")
            return
        kind = choose_observer(w.path, w.observer)
        watcher = Watcher(w.path, kind, self.dirty, self.clock)
        try:
            watcher.start()
        except OSError as exc:  # inotify watch or instance limit: fall back to polling
            self.log.warning("observer_fallback", root=w.path, error=str(exc), observer="polling")
            watcher = Watcher(w.path, "polling", self.dirty, self.clock)
            try:
                watcher.start()
            except OSError as exc2:  # e.g. the root is not readable by the service's user
                error = f"{exc2.strerror or exc2}: {getattr(exc2, 'filename', None) or w.path}"
                self.log.error("service_error", root=w.path, component="watcher", error=error,
                               action="retrying every loop; the rescan still judges what it can read")
                self.alerts.service_error(f"watcher of {w.path}", error, "give the ckptwatch user read and "
                                          f"execute access to {w.path}; retrying meanwhile", now=self.clock())
                return
        self.watchers[w.path] = watcher
        self.alerts.service_ok(f"watcher of {w.path}", now=self.clock())
        watcher.runs = self.run_index.get(w.path, frozenset())

    def _check_watchers(self) -> None:
        for w in self.config.watches:
            watcher = self.watchers.get(w.path)
            if watcher is None:
                if os.path.isdir(w.path):
                    self._start_watcher(w)
                    self.dirty.touch(w.path, self.clock())
                continue
            if not watcher.alive():
                self.log.error("observer_died", root=w.path, action="restarted; rescanning the root")
                del self.watchers[w.path]
                self._start_watcher(w)
                self.dirty.touch(w.path, self.clock())

    def _watch_for(self, root: str) -> WatchConfig | None:
        return next((w for w in self.config.watches if w.path == root), None)

    def _on_overflow(self, path: str | None) -> None:
        """Called in watchdog's thread: events were lost, so the root (or every root) is judged whole."""
        now = self.clock()
        if path is None:  # watchdog logs each overflow twice, once without a path: judge all, count none
            for w in self.config.watches:
                self.dirty.touch(w.path, now)
            return
        for w in self.config.watches:
            if path == w.path or path.startswith(w.path.rstrip(os.sep) + os.sep):
                self.overflows.append((now, w.path))
                self.dirty.touch(w.path, now)

    def _handle_overflows(self) -> None:
        """Log each overflow once; a root that keeps overflowing is moved to polling."""
        if not self.overflows:
            return
        now = self.clock()
        taken, self.overflows = self.overflows, []
        self._overflow_history = [(t, r) for t, r in [*getattr(self, "_overflow_history", []), *taken]
                                  if now - t <= OVERFLOW_WINDOW_S]
        for root in sorted({r for _, r in taken if r}):
            recent = sum(1 for _, r in self._overflow_history if r == root)
            self.log.warning("inotify_overflow", root=root, recent=recent,
                             action="events were lost; judging the whole root again")
            watcher = self.watchers.get(root)
            if recent >= OVERFLOW_LIMIT and watcher is not None and watcher.kind == "inotify":
                self.log.warning("observer_fallback", root=root, observer="polling",
                                 error=f"inotify queue overflowed {recent} times in {OVERFLOW_WINDOW_S:.0f} s",
                                 action="raise fs.inotify.max_queued_events (sysctl) above the number of "
                                        "directories below the root, or set observer = \"polling\" for it")
                watcher.stop()
                self.watchers[root] = Watcher(root, "polling", self.dirty, self.clock)
                self.watchers[root].runs = watcher.runs
                self.watchers[root].start()
                self._overflow_history = [(t, r) for t, r in self._overflow_history if r != root]

    # --- judging ----------------------------------------------------------------------------------

    def _judge(self, w: WatchConfig, scope: str | None = None) -> None:
        """One pass over a run (``scope``) or, when the run is unknown or gone, the whole watched root."""
        if not os.path.isdir(w.path):
            return
        s = self.config.service
        opts = CheckOptions(settle_seconds=s.settle_seconds, stale_after=s.stale_after,
                            expected_ranks=w.expected_ranks, second_look=True)
        now = self.clock()
        component = f"judging {w.path}"
        try:
            self.alerts.begin_pass()
            cache = self.caches.setdefault(w.path, {})
            runs = None
            if scope and scope != w.path:
                runs = check_run_dir(scope, opts, now, layout=w.layout, cache=cache)
            whole = runs is None
            if whole:
                runs = check_root(w.path, opts, now, layout=w.layout, cache=cache).runs
                live = frozenset(r.root for r in runs)
                self.run_index[w.path] = live
                watcher = self.watchers.get(w.path)
                if watcher is not None:
                    watcher.runs = live
                base = w.path.rstrip(os.sep) + os.sep
                self._forget_runs(lambda run: (run == w.path or run.startswith(base)) and run not in live)
            self._record(w, runs, now)
            if whole:
                self.alerts.root_judged(w.path, [r.root for r in runs], now=now)
            self.alerts.service_ok(component, now=now)
        except Exception as exc:  # noqa: BLE001 - a fault in one pass never stops the service
            error = f"{type(exc).__name__}: {exc}"
            action = "retrying at the next event or rescan"
            self.log.error("service_error", root=w.path, error=error, action=action)
            self.alerts.service_error(component, error, action + "; if it persists, run `ckptwatch once "
                                      f"{w.path}` by hand and report the error", now=now)
        self.notifier.send(f"STATUS={self._status_line()}")

    def _record(self, w: WatchConfig, runs: list, now: float) -> None:
        from ckptwatch.metrics import snapshot

        writing: dict[str, str] | None = None  # the open-files sweep, at most once per pass
        unsettled = False
        for run in runs:
            verdicts = list(run.checkpoints)
            about_to_change = self.state.changed_paths(verdicts)
            if any(v.path in about_to_change and v.status is not Status.IN_PROGRESS for v in verdicts):
                if writing is None:
                    writing = open_for_writing([w.path])
                verdicts = held_open_is_in_progress(verdicts, writing)
            for change in self.state.record(run.root, verdicts, now):
                v = change.verdict
                self.log.info("checkpoint_judged", run=run.root, checkpoint=v.path, step=v.step,
                              status=v.status.value, previous=change.previous_status,
                              problems=[{"kind": p.kind, "file": p.file, "message": full_message(p)}
                                        for p in v.problems],
                              hazards=[{"kind": h.kind, "file": h.file, "message": full_message(h)}
                                       for h in v.hazards])
            settling = [v for v in verdicts if v.status is Status.IN_PROGRESS]
            if settling:  # judge again when the newest write would have settled
                quiet = self.config.service.settle_seconds
                at = min(v.newest_mtime + quiet + 0.05 if v.newest_mtime + quiet > now else now + max(quiet, 1.0)
                         for v in settling)
                self.dirty.schedule(w.path, run.root, at)
            if w.latest_good:
                self._update_pointer(run.root, verdicts, run.layout, now)
            judged = replace(run, checkpoints=tuple(verdicts))
            look_again = self.alerts.run_judged(judged, now=now, stale_after=self.config.service.stale_after)
            if look_again is not None:
                self.dirty.schedule(w.path, run.root, look_again)
            newest = next((v for v in reversed(verdicts) if v.status is Status.COMPLETE), None)
            if newest is not None:
                self.run_bytes[run.root] = newest.bytes
            if w.loss is not None:
                from ckptwatch.engine import loss_root

                self.loss_runs[run.root] = (w.path, loss_root(judged), tuple((v.step, v.path) for v in verdicts))
                self._poll_loss(run.root, now)
            self.runs = {**self.runs, run.root: snapshot(run, self.resume_ratio.get(run.root))}

    def _poll_loss(self, run_root: str, now: float) -> None:
        """Read what the run's loss sources appended; log each newly judged resume; alert a jump.

        Called after each pass over the run and, while the run is active, every LOSS_POLL_SECONDS: log
        lines need no settling (only complete lines are read), so a jump is seen within one flush plus
        a few seconds, not after settle_seconds.
        """
        from ckptwatch.losswatch import RunLossWatcher

        w_root, where, checkpoints = self.loss_runs[run_root]
        w = self._watch_for(w_root)
        if w is None or w.loss is None:
            return
        watcher = self.loss_watchers.get(where)  # runs sharing a loss root (Lightning versions) share it
        if watcher is None:
            watcher = self.loss_watchers[where] = RunLossWatcher(where, w.loss)
        component = f"loss watch of {where}"
        try:
            resumes = watcher.poll(checkpoints)
            if watcher.grew:
                self.loss_grew[where] = now
        except Exception as exc:  # noqa: BLE001 - a log we cannot read never stops the checkpoint checks
            error = f"{type(exc).__name__}: {exc}"
            self.log.error("service_error", run=run_root, component=component, error=error,
                           action="retrying at the next pass")
            self.alerts.service_error(component, error, "retrying at the next pass; `ckptwatch loss "
                                      f"{where}` shows what the loss watch reads", now=now)
            return
        self.alerts.service_ok(component, now=now)
        for r in resumes:
            self.log.info("resume_detected", run=run_root, checkpoint=r.from_checkpoint, step=r.at_step,
                          from_step=r.from_step, before=r.before, after=r.after, ratio=r.ratio, alert=r.alert,
                          scratch=r.scratch, message=r.reason)
            if r.ratio is not None:
                self.resume_ratio[run_root] = r.ratio
            if r.alert:
                self._alert_loss_jump(run_root, watcher, r, now)

    def _poll_active_loss(self, now: float) -> None:
        """Poll the loss watch of active runs every LOSS_POLL_SECONDS, the others every LOSS_IDLE_SECONDS.

        Active: a file event in the run, or new loss points read, within LOSS_ACTIVE_SECONDS. A logger
        keeps its file open and appends, which produces no event the watcher listens to (only creates,
        closes after writing, moves and deletes), so growth seen by the last poll counts too. A resumed
        process creates files (an events file, its next checkpoint) that make the run active; the slow
        round over quiet runs is the safety net for one that only appends to an old log.
        """
        self.next_loss_poll = now + LOSS_POLL_SECONDS
        idle_round = now >= getattr(self, "_next_idle_loss_poll", 0.0)
        if idle_round:
            self._next_idle_loss_poll = now + LOSS_IDLE_SECONDS
        for run_root, (w_root, where, _) in list(self.loss_runs.items()):
            active = (self.dirty.active(w_root, run_root, now - LOSS_ACTIVE_SECONDS)
                      or now - self.loss_grew.get(where, -1e18) <= LOSS_ACTIVE_SECONDS)
            if active or idle_round:
                self._poll_loss(run_root, now)

    def _alert_loss_jump(self, run_root: str, watcher, r, now: float) -> None:  # noqa: ANN001
        from ckptwatch.alerts.messages import loss_jump_alert

        hazards = self.state.hazard_messages(r.from_checkpoint) if r.from_checkpoint else []
        plot = None
        if self.alerts.enabled:
            import hashlib

            digest = hashlib.sha1(run_root.encode()).hexdigest()[:8]  # stable across restarts, unlike hash()
            plot = os.path.join(self.state_dir, "plots", f"{os.path.basename(run_root.rstrip(os.sep))}-"
                                f"{digest}-step{r.at_step}.png")
            try:
                from ckptwatch.losswatch import plot_history

                os.makedirs(os.path.dirname(plot), exist_ok=True)
                plot_history(watcher.report(), plot)
            except Exception as exc:  # noqa: BLE001 - the alert goes out without its picture
                self.log.warning("loss_plot_failed", run=run_root, error=f"{type(exc).__name__}: {exc}")
                plot = None
        self.alerts.raise_alert(loss_jump_alert(
            run=run_root, at_step=r.at_step, from_step=r.from_step, from_checkpoint=r.from_checkpoint,
            before=r.before, after=r.after, ratio=r.ratio, scratch=r.scratch, hazards=hazards,
            host=self.alerts.host, now=now, plot=plot, nonfinite=r.nonfinite))

    def _check_disks(self, now: float) -> None:
        """disk_low per watched root, once a minute (psutil.disk_usage is one statvfs)."""
        self.next_disk_check = now + DISK_CHECK_SECONDS
        for w in self.config.watches:
            if os.path.isdir(w.path):
                base = w.path.rstrip(os.sep) + os.sep
                sizes = [b for r, b in self.run_bytes.items() if r == w.path or r.startswith(base)]
                self.alerts.check_disk(w.path, max(sizes) if sizes else None, now=now)

    def _update_pointer(self, run_root: str, verdicts: list[Verdict], layout: str, now: float) -> None:
        from ckptwatch import pointer

        complete = [v for v in verdicts if v.status is Status.COMPLETE]
        if not complete or pointer.current(run_root) == complete[-1].path:
            return
        newest = complete[-1]
        try:
            pointer.update(run_root, newest.path, newest.step, layout, now)
        except OSError as exc:
            action = "retrying at the next judgement; with systemd, add the run root to ReadWritePaths="
            self.log.error("resume_pointer_failed", run=run_root, checkpoint=newest.path,
                           error=f"{exc.strerror or exc}", action=action)
            self.alerts.service_error(f"resume pointer in {run_root}", f"{exc.strerror or exc}", action, now=now)
            return
        self.alerts.service_ok(f"resume pointer in {run_root}", now=now)
        self.log.info("resume_pointer_updated", run=run_root, checkpoint=newest.path, step=newest.step)

    def _status_line(self) -> str:
        counts = self.state.counts()
        return (f"watching {len(self.config.watches)} roots; {counts.get('complete', 0)} complete, "
                f"{counts.get('incomplete', 0)} incomplete, {counts.get('corrupt', 0)} corrupt, "
                f"{counts.get('in_progress', 0)} in progress")


def held_open_is_in_progress(verdicts: list[Verdict], writing: dict[str, str]) -> list[Verdict]:
    """A checkpoint with a file some process still holds open for writing has not settled."""
    if not writing:
        return verdicts
    out = []
    for v in verdicts:
        base = os.path.realpath(v.path).rstrip(os.sep) + os.sep
        held = sorted(p for p in writing if p.startswith(base) or p == os.path.realpath(v.path))
        if held and v.status is not Status.IN_PROGRESS:
            v = replace(v, status=Status.IN_PROGRESS, problems=tuple(
                Problem("in_progress", p, f"{p} is open for writing by {writing[p]}") for p in held))
        out.append(v)
    return out
