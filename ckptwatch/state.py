"""The service's memory: what it has seen and judged, in sqlite (WAL), surviving ``kill -9``.

Why sqlite: one file in the state dir, atomic commits, and WAL mode lets ``ckptwatch status`` read
while the service writes. A verdict is recorded once per change (status, problems or hazards), so
a restart after ``kill -9`` neither re-logs nor re-alerts what was already judged.

The service opens its store with ``open_for_service``: one service per state dir (``statelock``).
Every method raises a failure of the file as an operator error (``errors.StateError``, ``statedb``):
at start the service exits with its code; while it runs, the guarded pass logs it as ``service_error``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from ckptwatch.findings import hazard_json, problem_json
from ckptwatch.model import RunReport, Verdict
from ckptwatch.statedb import STATE_FILE, connect, corrupt, state_errors
from ckptwatch.statelock import ServiceLock

SCHEMA_VERSION = 1  # PRAGMA user_version

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    path TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    layout TEXT NOT NULL,
    step INTEGER,
    status TEXT NOT NULL,
    fingerprint TEXT NOT NULL,      -- status + problem/hazard kinds and files: what "changed" means
    problems TEXT NOT NULL,         -- JSON list of {kind, file, message}
    hazards TEXT NOT NULL,
    first_seen REAL NOT NULL,
    judged_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_run ON checkpoints(run);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    layout TEXT NOT NULL,
    newest_complete TEXT,           -- the run report's verdicts, as the engine chose them
    newest_complete_step INTEGER,
    newest_resumable TEXT,
    newest_resumable_step INTEGER,
    judged_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Change:
    """A verdict that differs from the one stored (or is the first)."""

    verdict: Verdict
    run: str
    previous_status: str | None


def _fingerprint(v: Verdict) -> str:
    return json.dumps([v.status.value, sorted((p.kind, p.file) for p in v.problems),
                       sorted((h.kind, h.file) for h in v.hazards)])


P = ParamSpec("P")
R = TypeVar("R")


def _mapped(method: Callable[Concatenate[StateStore, P], R]) -> Callable[Concatenate[StateStore, P], R]:
    """Run a store method with failures of the file raised as operator errors (``statedb``)."""

    @functools.wraps(method)
    def call(self: StateStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with state_errors(self.path, reading=self.read_only):
            return method(self, *args, **kwargs)

    return call


class StateStore:
    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only  # `ckptwatch status` beside a running service: never write, never create
        self._lock: ServiceLock | None = None
        self._db = connect(path, read_only=read_only)
        self._prepare()

    @classmethod
    def open_for_service(cls, state_dir: str) -> StateStore:
        """The service's store in ``state_dir``, holding the dir's lock until ``close``.

        The lock is taken before sqlite opens the file, so a second service is refused (naming the
        first one's pid) before it reads or writes anything.
        """
        lock = ServiceLock.acquire(state_dir)
        try:
            store = cls(os.path.join(state_dir, STATE_FILE))
        except BaseException:
            lock.release()
            raise
        store._lock = lock
        return store

    @_mapped
    def _prepare(self) -> None:
        if self.read_only:
            if not self._has_table("checkpoints"):
                raise corrupt(self.path, "holds no ckptwatch state (no checkpoints table)")
            return
        self._db.executescript(SCHEMA)
        # Also the first write into the file: a state dir that cannot take one fails here, at start.
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _has_table(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (name,)).fetchone() is not None

    @_mapped
    def record(self, report: RunReport, now: float) -> list[Change]:
        """Store a run's verdicts and resume choice in one transaction; return the verdicts that changed."""
        run, verdicts = report.root, report.checkpoints
        changes: list[Change] = []
        complete, resumable = report.newest_complete, report.newest_resumable
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?)",
                             (run, report.layout, complete.path if complete else None,
                              complete.step if complete else None, resumable.path if resumable else None,
                              resumable.step if resumable else None, now))
            for v in verdicts:
                row = self._db.execute("SELECT status, fingerprint FROM checkpoints WHERE path = ?",
                                       (v.path,)).fetchone()
                fp = _fingerprint(v)
                problems = json.dumps([problem_json(p) for p in v.problems])
                hazards = json.dumps([hazard_json(h) for h in v.hazards])
                if row is None:
                    self._db.execute(
                        "INSERT INTO checkpoints VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (v.path, run, v.layout, v.step, v.status.value, fp, problems, hazards, now, now))
                    changes.append(Change(v, run, None))
                elif row[1] != fp:
                    self._db.execute(
                        "UPDATE checkpoints SET status=?, fingerprint=?, problems=?, hazards=?, step=?, "
                        "judged_at=? WHERE path=?",
                        (v.status.value, fp, problems, hazards, v.step, now, v.path))
                    changes.append(Change(v, run, row[0]))
        return changes

    @_mapped
    def changed_paths(self, verdicts: list[Verdict]) -> set[str]:
        """Paths whose verdict differs from the stored one (or is new): what ``record`` would report."""
        out = set()
        for v in verdicts:
            row = self._db.execute("SELECT fingerprint FROM checkpoints WHERE path = ?", (v.path,)).fetchone()
            if row is None or row[0] != _fingerprint(v):
                out.add(v.path)
        return out

    @_mapped
    def hazard_messages(self, path: str) -> list[str]:
        """The stored resume hazards of one checkpoint (for the loss_jump alert: cause beside effect)."""
        row = self._db.execute("SELECT hazards FROM checkpoints WHERE path = ?", (path,)).fetchone()
        return [f"{h['kind']}: {h['message']}" for h in json.loads(row[0])] if row else []

    @_mapped
    def runs(self) -> list[dict[str, object]]:
        """Per run: checkpoint counts by status, the newest complete one, and the open problems."""
        chosen = {}
        if self._has_table("runs"):  # absent in a state file the running service has not upgraded yet
            chosen = {row[0]: row[1:] for row in self._db.execute(
                "SELECT run, newest_complete, newest_complete_step, newest_resumable, newest_resumable_step "
                "FROM runs")}
        out = []
        for (run,) in self._db.execute("SELECT DISTINCT run FROM checkpoints ORDER BY run").fetchall():
            rows = self._db.execute("SELECT path, step, status, problems, hazards, judged_at "
                                    "FROM checkpoints WHERE run = ? ORDER BY step, path", (run,)).fetchall()
            counts: dict[str, int] = {}
            for _, _, status, _, _, _ in rows:
                counts[status] = counts.get(status, 0) + 1
            complete_path, complete_step, resumable_path, resumable_step = chosen.get(run, (None,) * 4)
            open_problems = [{"checkpoint": r[0], "step": r[1], "status": r[2], "problems": json.loads(r[3]),
                              "hazards": json.loads(r[4])}
                             for r in rows if r[2] in ("incomplete", "corrupt") or json.loads(r[4])]
            out.append({"run": run, "counts": counts,
                        "newest_complete": {"path": complete_path, "step": complete_step} if complete_path
                        else None,
                        "newest_resumable": {"path": resumable_path, "step": resumable_step} if resumable_path
                        else None,
                        "last_judged": max(r[5] for r in rows), "open": open_problems})
        return out

    @_mapped
    def open_alerts(self) -> dict[str, list[dict[str, object]]]:
        """Open alerts per run, from the alert ledger's table (absent when no channel was ever configured)."""
        if not self._has_table("alerts"):
            return {}
        rows = self._db.execute("SELECT run, checkpoint, kind, first_sent FROM alerts WHERE state = 'open' "
                                "ORDER BY first_sent").fetchall()
        out: dict[str, list[dict[str, object]]] = {}
        for run, checkpoint, kind, first_sent in rows:
            out.setdefault(run, []).append({"checkpoint": checkpoint or None, "kind": kind,
                                            "since": first_sent})
        return out

    @_mapped
    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, COUNT(*) FROM checkpoints GROUP BY status").fetchall())

    def close(self) -> None:
        """Close the database, then free the service's lock (if this store holds one)."""
        self._db.close()
        if self._lock is not None:
            self._lock.release()


def default_state_dir() -> str:
    """/var/lib/ckptwatch as root (systemd's StateDirectory), else the XDG state dir."""
    if os.geteuid() == 0:
        return "/var/lib/ckptwatch"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "ckptwatch")
