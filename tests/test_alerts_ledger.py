"""The alert ledger: what was sent survives a restart; open -> cleared -> open again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ckptwatch.alerts.ledger import AlertLedger
from ckptwatch.state import StateStore

KEY = ("/data/runs/run-a", "/data/runs/run-a/checkpoint-5000", "incomplete")


def test_raise_once_then_only_on_new_fingerprint(tmp_path: Path) -> None:
    """An open key with the same fingerprint is not raised again; a different fingerprint is."""
    led = AlertLedger(str(tmp_path / "state.sqlite"))
    assert led.should_raise(KEY, "fp1")
    led.mark_sent(KEY, "fp1", 100.0)
    assert not led.should_raise(KEY, "fp1")
    assert led.should_raise(KEY, "fp2")
    led.mark_sent(KEY, "fp2", 200.0)
    (o,) = led.open_alerts()
    assert (o.key, o.first_sent, o.last_sent, o.fingerprint) == (KEY, 100.0, 200.0, "fp2")


def test_survives_reopen(tmp_path: Path) -> None:
    """A new ledger on the same file (a restart) remembers what was sent."""
    path = str(tmp_path / "state.sqlite")
    led = AlertLedger(path)
    led.mark_sent(KEY, "fp", 100.0)
    led.close()
    again = AlertLedger(path)
    assert not again.should_raise(KEY, "fp") and again.is_open(KEY)


def test_clear_reports_whether_it_was_open(tmp_path: Path) -> None:
    """clear() is True once per episode; a cleared key that returns is raised again as a new episode."""
    led = AlertLedger(str(tmp_path / "state.sqlite"))
    assert led.clear(KEY, 50.0) is False
    led.mark_sent(KEY, "fp", 100.0)
    assert led.clear(KEY, 150.0) is True
    assert led.clear(KEY, 160.0) is False
    assert led.open_alerts() == [] and led.should_raise(KEY, "fp")
    led.mark_sent(KEY, "fp", 300.0)
    assert led.open_alerts()[0].first_sent == 300.0


def test_shares_the_state_db_in_wal_mode(tmp_path: Path) -> None:
    """The ledger lives beside the state store's table in one WAL db, each with its own connection."""
    path = str(tmp_path / "state.sqlite")
    store = StateStore(path)
    led = AlertLedger(path)
    led.mark_sent(KEY, "fp", 1.0)
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"alerts", "checkpoints"} <= tables
    assert store.counts() == {}
    store.close()
    led.close()
