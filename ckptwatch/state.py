"""The service's memory: what it has seen and judged, in sqlite (WAL), surviving ``kill -9``.

Why sqlite: one file in the state dir, atomic commits, and WAL mode lets ``ckptwatch status`` read
while the service writes. A verdict is recorded once per change (status, problems or hazards), so
a restart after ``kill -9`` neither re-logs nor re-alerts what was already judged.

What the mirror has committed is recorded too (``mirrored``): a restart trusts a row while the checkpoint
still has the bytes and newest mtime it had when its copy was committed, so the mirror sink does not ask
the target again for every complete checkpoint (two GETs each on S3); ``ckptwatch status`` reads it for
the mirror lag.

Migrations: ``SCHEMA`` creates what a new file needs; ``_migrate`` brings an older file up to
``SCHEMA_VERSION`` (``PRAGMA user_version``) by adding what it lacks, in place, and never drops data. A
reader (``status``) copes with a file the running service has not upgraded yet.

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
from json.encoder import encode_basestring_ascii as _json_str
from typing import Concatenate, ParamSpec, TypeVar

from ckptwatch.findings import hazard_json, problem_json
from ckptwatch.model import RunReport, Verdict
from ckptwatch.statedb import STATE_FILE, connect, corrupt, state_errors
from ckptwatch.statelock import ServiceLock

SCHEMA_VERSION = 2  # PRAGMA user_version. 2: runs.newest_complete_mtime, runs.mirror_to, table mirrored

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
    judged_at REAL NOT NULL,
    newest_complete_mtime REAL,     -- when the newest complete checkpoint was written (its newest file)
    mirror_to TEXT                  -- the run's [watch.mirror] to when it was judged; NULL without a mirror
);
CREATE TABLE IF NOT EXISTS mirrored (
    checkpoint TEXT NOT NULL,
    target TEXT NOT NULL,           -- [watch.mirror] to: the copy is <to>/<run>/<checkpoint>
    run TEXT NOT NULL,
    step INTEGER,
    copy TEXT NOT NULL,             -- where the committed copy is, as the logs name it
    source_bytes INTEGER NOT NULL,  -- the checkpoint's bytes and newest mtime when its copy was committed:
    source_mtime REAL NOT NULL,     --   a restart trusts the row only while both are unchanged
    committed_at REAL NOT NULL,     -- when the service saw the copy committed (or found it up to date)
    verified_at REAL NOT NULL,      -- the last time the target confirmed it
    PRIMARY KEY (checkpoint, target)
);
CREATE INDEX IF NOT EXISTS mirrored_run ON mirrored(run, target);
"""
# Columns added to existing tables since version 1, in the order they were added: (table, column, type).
ADDED_COLUMNS = (("runs", "newest_complete_mtime", "REAL"), ("runs", "mirror_to", "TEXT"))


@dataclass(frozen=True)
class MirroredCopy:
    """One committed copy the mirror sink knows of (a row of ``mirrored``)."""

    run: str
    checkpoint: str
    target: str
    copy: str
    step: int | None
    source_bytes: int
    source_mtime: float
    committed_at: float
    verified_at: float

    def trusted_for(self, v: Verdict) -> bool:
        """Does the checkpoint still look as it did when this copy was committed (no I/O)?"""
        return (v.path, v.bytes, v.newest_mtime) == (self.checkpoint, self.source_bytes, self.source_mtime)


@dataclass(frozen=True)
class Change:
    """A verdict that differs from the one stored (or is the first)."""

    verdict: Verdict
    run: str
    previous_status: str | None


def _fingerprint(v: Verdict) -> str:
    """Status and the (kind, file) of each problem and hazard: what "changed" means.

    The text is exactly ``json.dumps([status, sorted pairs, sorted pairs])`` (fingerprints stored by
    earlier versions still compare equal), built from json's own string encoder: it runs for every
    checkpoint of every run at each whole-root pass, and json.dumps's set-up per call was most of it."""
    def pairs(items: list[tuple[str, str]]) -> str:
        return ", ".join(f"[{_json_str(kind)}, {_json_str(file)}]" for kind, file in sorted(items))

    return (f"[{_json_str(v.status.value)}, [{pairs([(p.kind, p.file) for p in v.problems])}], "
            f"[{pairs([(h.kind, h.file) for h in v.hazards])}]]")


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
        self._migrate()
        # Also the first write into the file: a state dir that cannot take one fails here, at start.
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _migrate(self) -> None:
        """Bring a file written by an older ckptwatch up to ``SCHEMA_VERSION`` (``CREATE TABLE IF NOT
        EXISTS`` already added the tables it lacked; here, the columns)."""
        with self._db:
            self._db.execute("BEGIN")
            for table, column, kind in ADDED_COLUMNS:
                if column not in self._columns(table):
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def _has_table(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (name,)).fetchone() is not None

    @_mapped
    def record(self, report: RunReport, now: float, *, mirror_to: str | None = None) -> list[Change]:
        """Store a run's verdicts and resume choice in one transaction; return the verdicts that changed.
        ``mirror_to``: the run's ``[watch.mirror] to`` (None without a mirror), for the lag in status."""
        run, verdicts = report.root, report.checkpoints
        changes: list[Change] = []
        complete, resumable = report.newest_complete, report.newest_resumable
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO runs (run, layout, newest_complete, "
                             "newest_complete_step, newest_resumable, newest_resumable_step, judged_at, "
                             "newest_complete_mtime, mirror_to) VALUES (?,?,?,?,?,?,?,?,?)",
                             (run, report.layout, complete.path if complete else None,
                              complete.step if complete else None, resumable.path if resumable else None,
                              resumable.step if resumable else None, now,
                              complete.newest_mtime if complete else None, mirror_to))
            stored = self._stored(run, verdicts)
            for v in verdicts:
                row = stored.get(v.path)
                fp = _fingerprint(v)
                if row is not None and row[1] == fp:
                    continue  # unchanged: most of every pass, so nothing is encoded for it
                problems = json.dumps([problem_json(p) for p in v.problems])
                hazards = json.dumps([hazard_json(h) for h in v.hazards])
                if row is None:
                    self._db.execute(
                        "INSERT INTO checkpoints VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (v.path, run, v.layout, v.step, v.status.value, fp, problems, hazards, now, now))
                    changes.append(Change(v, run, None))
                else:
                    self._db.execute(
                        "UPDATE checkpoints SET status=?, fingerprint=?, problems=?, hazards=?, step=?, "
                        "judged_at=? WHERE path=?",
                        (v.status.value, fp, problems, hazards, v.step, now, v.path))
                    changes.append(Change(v, run, row[0]))
        return changes

    def _stored(self, run: str, verdicts: list[Verdict]) -> dict[str, tuple[str, str]]:
        """path -> (status, fingerprint) of the stored rows of these verdicts: one query by the run's
        index, not one per checkpoint (a whole-root pass over 10,000 runs asks for every checkpoint)."""
        wanted = {v.path for v in verdicts}
        rows = self._db.execute("SELECT path, status, fingerprint FROM checkpoints WHERE run = ?", (run,))
        out = {path: (status, fp) for path, status, fp in rows if path in wanted}
        for path in wanted - out.keys():  # stored under another run name (a run dir renamed, re-rooted)
            row = self._db.execute("SELECT status, fingerprint FROM checkpoints WHERE path = ?",
                                   (path,)).fetchone()
            if row is not None:
                out[path] = row
        return out

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
        """Per run: checkpoint counts by status, the newest complete one, the open problems, and for a run
        with a mirror its newest committed copy (``mirror``; None without a mirror)."""
        chosen = {}
        if self._has_table("runs"):  # absent in a state file the running service has not upgraded yet
            have = self._columns("runs")
            extra = [c if c in have else "NULL" for c in ("newest_complete_mtime", "mirror_to")]
            chosen = {row[0]: row[1:] for row in self._db.execute(
                "SELECT run, newest_complete, newest_complete_step, newest_resumable, newest_resumable_step, "
                f"{', '.join(extra)} FROM runs")}
        out = []
        for (run,) in self._db.execute("SELECT DISTINCT run FROM checkpoints ORDER BY run").fetchall():
            rows = self._db.execute("SELECT path, step, status, problems, hazards, judged_at "
                                    "FROM checkpoints WHERE run = ? ORDER BY step, path", (run,)).fetchall()
            counts: dict[str, int] = {}
            for _, _, status, _, _, _ in rows:
                counts[status] = counts.get(status, 0) + 1
            (complete_path, complete_step, resumable_path, resumable_step, complete_mtime,
             mirror_to) = chosen.get(run, (None,) * 6)
            open_problems = [{"checkpoint": r[0], "step": r[1], "status": r[2], "problems": json.loads(r[3]),
                              "hazards": json.loads(r[4])}
                             for r in rows if r[2] in ("incomplete", "corrupt") or json.loads(r[4])]
            newest = self.newest_mirrored(run, mirror_to) if mirror_to else None
            out.append({"run": run, "counts": counts,
                        "newest_complete": {"path": complete_path, "step": complete_step} if complete_path
                        else None,
                        "newest_resumable": {"path": resumable_path, "step": resumable_step} if resumable_path
                        else None,
                        "last_judged": max(r[5] for r in rows), "open": open_problems,
                        "mirror": None if not mirror_to else {
                            "to": mirror_to, "newest_complete_mtime": complete_mtime,
                            "newest_committed": None if newest is None else {
                                "path": newest.checkpoint, "step": newest.step, "mtime": newest.source_mtime,
                                "committed_at": newest.committed_at, "verified_at": newest.verified_at}}})
        return out

    # --- what the mirror committed ------------------------------------------------------------------------

    _MIRRORED = ("run, checkpoint, target, copy, step, source_bytes, source_mtime, committed_at, verified_at")

    @_mapped
    def mirrored(self, run: str, target: str) -> list[MirroredCopy]:
        """The committed copies of ``run``'s checkpoints on ``target`` (sources since deleted included)."""
        if not self._has_table("mirrored"):
            return []
        return [MirroredCopy(*row) for row in self._db.execute(
            f"SELECT {self._MIRRORED} FROM mirrored WHERE run = ? AND target = ?", (run, target))]

    @_mapped
    def newest_mirrored(self, run: str, target: str) -> MirroredCopy | None:
        """``run``'s committed copy with the highest step (the newest source when steps are unknown)."""
        if not self._has_table("mirrored"):
            return None
        row = self._db.execute(
            f"SELECT {self._MIRRORED} FROM mirrored WHERE run = ? AND target = ? "
            "ORDER BY step IS NULL, step DESC, source_mtime DESC LIMIT 1", (run, target)).fetchone()
        return MirroredCopy(*row) if row else None

    @_mapped
    def record_mirrored(self, copies: list[MirroredCopy]) -> None:
        """Remember committed copies (a copy committed again replaces its row)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(f"INSERT OR REPLACE INTO mirrored ({self._MIRRORED}) "
                                 "VALUES (?,?,?,?,?,?,?,?,?)",
                                 [(c.run, c.checkpoint, c.target, c.copy, c.step, c.source_bytes,
                                   c.source_mtime, c.committed_at, c.verified_at) for c in copies])

    @_mapped
    def verified_mirrored(self, target: str, checkpoints: list[str], now: float) -> None:
        """The target confirmed these copies at ``now``."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE mirrored SET verified_at = ? WHERE checkpoint = ? AND target = ?",
                                 [(now, c, target) for c in checkpoints])

    @_mapped
    def drop_mirrored(self, target: str, checkpoint: str) -> None:
        """The copy is gone from the target (or no longer verifies): forget it, so it is copied again."""
        with self._db:
            self._db.execute("DELETE FROM mirrored WHERE checkpoint = ? AND target = ?", (checkpoint, target))

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
