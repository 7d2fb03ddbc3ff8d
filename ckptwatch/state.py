"""The service's memory: what it has seen and judged, in sqlite (WAL), surviving ``kill -9``.

Why sqlite: one file in the state dir, atomic commits, and WAL mode lets ``ckptwatch status`` read
while the service writes. A verdict is recorded once per change (status, problems or hazards), so
a restart after ``kill -9`` neither re-logs nor (later) re-alerts what was already judged.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass

from ckptwatch.findings import hazard_json, problem_json
from ckptwatch.model import RunReport, Verdict

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


class StateStore:
    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        if read_only:  # `ckptwatch status` beside a running service: never write, never create
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def record(self, report: RunReport, now: float) -> list[Change]:
        """Store one run's verdicts and resume choice; return the verdicts that changed, in one transaction."""
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
                        "UPDATE checkpoints SET status=?, fingerprint=?, problems=?, hazards=?, step=?, judged_at=? "
                        "WHERE path=?", (v.status.value, fp, problems, hazards, v.step, now, v.path))
                    changes.append(Change(v, run, row[0]))
        return changes

    def changed_paths(self, verdicts: list[Verdict]) -> set[str]:
        """Paths whose verdict differs from the stored one (or is new): what ``record`` would report."""
        out = set()
        for v in verdicts:
            row = self._db.execute("SELECT fingerprint FROM checkpoints WHERE path = ?", (v.path,)).fetchone()
            if row is None or row[0] != _fingerprint(v):
                out.add(v.path)
        return out

    def hazard_messages(self, path: str) -> list[str]:
        """The stored resume hazards of one checkpoint (for the loss_jump alert: cause beside effect)."""
        row = self._db.execute("SELECT hazards FROM checkpoints WHERE path = ?", (path,)).fetchone()
        return [f"{h['kind']}: {h['message']}" for h in json.loads(row[0])] if row else []

    def runs(self) -> list[dict[str, object]]:
        """Per run: checkpoint counts by status, the newest complete one, and the open problems."""
        try:
            chosen = {row[0]: row[1:] for row in self._db.execute(
                "SELECT run, newest_complete, newest_complete_step, newest_resumable, newest_resumable_step "
                "FROM runs")}
        except sqlite3.OperationalError:  # a state file the running service has not upgraded yet
            chosen = {}
        out = []
        for (run,) in self._db.execute("SELECT DISTINCT run FROM checkpoints ORDER BY run").fetchall():
            rows = self._db.execute("SELECT path, step, status, problems, hazards, judged_at FROM checkpoints "
                                    "WHERE run = ? ORDER BY step, path", (run,)).fetchall()
            counts: dict[str, int] = {}
            for _, _, status, _, _, _ in rows:
                counts[status] = counts.get(status, 0) + 1
            complete_path, complete_step, resumable_path, resumable_step = chosen.get(run, (None,) * 4)
            open_problems = [{"checkpoint": r[0], "step": r[1], "status": r[2], "problems": json.loads(r[3]),
                              "hazards": json.loads(r[4])}
                             for r in rows if r[2] in ("incomplete", "corrupt") or json.loads(r[4])]
            out.append({"run": run, "counts": counts,
                        "newest_complete": {"path": complete_path, "step": complete_step} if complete_path else None,
                        "newest_resumable": {"path": resumable_path, "step": resumable_step} if resumable_path
                        else None,
                        "last_judged": max(r[5] for r in rows), "open": open_problems})
        return out

    def open_alerts(self) -> dict[str, list[dict[str, object]]]:
        """Open alerts per run, from the alert ledger's table (absent when no channel was ever configured)."""
        try:
            rows = self._db.execute("SELECT run, checkpoint, kind, first_sent FROM alerts WHERE state = 'open' "
                                    "ORDER BY first_sent").fetchall()
        except sqlite3.OperationalError:  # no such table
            return {}
        out: dict[str, list[dict[str, object]]] = {}
        for run, checkpoint, kind, first_sent in rows:
            out.setdefault(run, []).append({"checkpoint": checkpoint or None, "kind": kind, "since": first_sent})
        return out

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, COUNT(*) FROM checkpoints GROUP BY status").fetchall())

    def close(self) -> None:
        self._db.close()


def default_state_dir() -> str:
    """/var/lib/ckptwatch as root (systemd's StateDirectory), else the XDG state dir."""
    if os.geteuid() == 0:
        return "/var/lib/ckptwatch"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "ckptwatch")
