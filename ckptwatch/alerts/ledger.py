"""What has been alerted, in sqlite: so a restart (even ``kill -9``) neither repeats nor forgets an alert.

DESIGN.md invariant 6. The ledger lives in the service's state db (one file to back up, one place to
look) but opens its own connection and owns its own table: the state store and the dispatcher's worker
thread never share a connection or a transaction. WAL lets ``ckptwatch status`` read while the service
writes; ``busy_timeout`` makes two writers wait for each other instead of failing.

An alert's life: ``should_raise`` (no open alert with this key and fingerprint) -> ``mark_sent`` (open)
-> ``clear`` (cleared; ``True`` means "it was open: tell people it is resolved"). A cleared key that
comes back is raised again.

A failure of the file (full disk, I/O error, damage) is raised as the matching operator error
(``statedb``): at start the service exits with its code; in the dispatcher's worker it is logged.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from ckptwatch.alerts.messages import AlertKey
from ckptwatch.statedb import connect, state_errors

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY,          -- JSON [run, checkpoint, kind]
    kind TEXT NOT NULL,
    run TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'cleared')),
    first_sent REAL NOT NULL,      -- when this episode was first alerted
    last_sent REAL NOT NULL,       -- when it was last (re-)alerted, or cleared
    fingerprint TEXT NOT NULL      -- what the open alert said; a different one is raised again
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts(state);
"""


@dataclass(frozen=True)
class OpenAlert:
    key: AlertKey
    first_sent: float
    last_sent: float
    fingerprint: str


def _k(key: AlertKey) -> str:
    return json.dumps(list(key))


class AlertLedger:
    """De-duplication across restarts. Thread safe (one connection behind a lock)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = connect(path, busy_timeout_ms=busy_timeout_ms)
        with state_errors(path):
            self._db.executescript(SCHEMA)

    def should_raise(self, key: AlertKey, fingerprint: str) -> bool:
        """True unless an alert with this key is open and said the same thing (same fingerprint)."""
        with self._lock, state_errors(self.path):
            row = self._db.execute("SELECT state, fingerprint FROM alerts WHERE key = ?",
                                   (_k(key),)).fetchone()
        return row is None or row[0] != "open" or row[1] != fingerprint

    def mark_sent(self, key: AlertKey, fingerprint: str, now: float) -> None:
        """Record that the alert went out: the key is open with this fingerprint."""
        run, checkpoint, kind = key
        with self._lock, state_errors(self.path), self._db:
            self._db.execute(
                "INSERT INTO alerts VALUES (?,?,?,?,'open',?,?,?) ON CONFLICT(key) DO UPDATE SET "
                "first_sent = CASE WHEN state = 'open' THEN first_sent ELSE excluded.first_sent END, "
                "state = 'open', last_sent = excluded.last_sent, fingerprint = excluded.fingerprint",
                (_k(key), kind, run, checkpoint, now, now, fingerprint))

    def clear(self, key: AlertKey, now: float) -> bool:
        """Close the alert; True if it was open (so a recovery notice is due), False if there was none."""
        with self._lock, state_errors(self.path), self._db:
            cur = self._db.execute("UPDATE alerts SET state = 'cleared', last_sent = ? "
                                   "WHERE key = ? AND state = 'open'", (now, _k(key)))
            return cur.rowcount > 0

    def is_open(self, key: AlertKey) -> bool:
        with self._lock, state_errors(self.path):
            row = self._db.execute("SELECT state FROM alerts WHERE key = ?", (_k(key),)).fetchone()
        return bool(row and row[0] == "open")

    def open_alerts(self) -> list[OpenAlert]:
        """Every open alert, oldest first (for ``ckptwatch status`` and to clear what vanished)."""
        with self._lock, state_errors(self.path):
            rows = self._db.execute("SELECT key, first_sent, last_sent, fingerprint FROM alerts "
                                    "WHERE state = 'open' ORDER BY first_sent, key").fetchall()
        return [OpenAlert(tuple(json.loads(k)), f, last, fp)  # type: ignore[arg-type]
                for k, f, last, fp in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
