"""``[watch.retention]``: defaults, each key read, each bad value naming ``watch[0].retention.KEY``."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptwatch.config import load_config
from ckptwatch.config.retention import FreeSpace
from ckptwatch.errors import ConfigError


def _load(tmp_path: Path, body: str):
    p = tmp_path / "c.toml"
    p.write_text(f'[[watch]]\npath = "{tmp_path}"\n[watch.retention]\n{body}')
    return load_config(str(p)).watches[0].retention


def test_absent_table_means_no_retention(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(f'[[watch]]\npath = "{tmp_path}"\n')
    assert load_config(str(p)).watches[0].retention is None


def test_every_key_is_read(tmp_path: Path) -> None:
    r = _load(tmp_path, 'keep_last = 3\nkeep_every_steps = 1000\nkeep_best = 1\nmetric = "eval_loss"\n'
                        'mode = "max"\nkeep_within = "6h"\nkeep_interval = "1d"\n'
                        'delete_incomplete_after = "30m"\nmin_free = "50G"\ndry_run = true\n')
    assert (r.keep_last, r.keep_every_steps, r.keep_best, r.metric) == (3, 1000, 1, "eval_loss")
    assert r.mode == "max"
    assert (r.keep_within, r.keep_interval, r.delete_incomplete_after) == (6 * 3600, 86400, 1800)
    assert r.min_free == FreeSpace(bytes=50 << 30) and r.dry_run is True
    assert r.keep_rules == ("keep_last", "keep_every_steps", "keep_best", "keep_within", "keep_interval")


def test_min_free_as_a_percentage(tmp_path: Path) -> None:
    r = _load(tmp_path, 'min_free = "10%"\n')
    assert r.min_free == FreeSpace(percent=10.0) and r.min_free.required(1000) == 100
    assert r.keep_rules == () and r.mode == "min" and r.dry_run is False


@pytest.mark.parametrize(("body", "key", "words"), [
    ("", "watch[0].retention", "sets no keep rule"),
    ("keep_last = 0\n", "watch[0].retention.keep_last", "whole number"),
    ("keep_best = 2\n", "watch[0].retention.metric", "must be set when keep_best is"),
    ('keep_last = 1\nmode = "lowest"\n', "watch[0].retention.mode", "not one of"),
    ('keep_last = 1\nmin_free = "110%"\n', "watch[0].retention.min_free", "percentage"),
    ('keep_last = 1\nmin_free = "lots"\n', "watch[0].retention.min_free", "not a size"),
    ('keep_last = 1\nkeep_within = "soon"\n', "watch[0].retention.keep_within", ""),
    ('keep_last = 1\nmetric = ""\n', "watch[0].retention.metric", "metric name"),
    ("keep_last = 1\nkeep_lats = 2\n", "watch[0].retention.keep_lats", ""),
])
def test_bad_values_name_the_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body)
    assert key in str(err.value) and words in str(err.value)
