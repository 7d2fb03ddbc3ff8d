"""``[watch.loss]`` parsing: defaults and errors that name the file and the dotted key."""

from __future__ import annotations

import pytest

from ckptwatch.errors import ConfigError
from ckptwatch.losswatch.settings import DEFAULT_METRICS, LossSettings, parse_loss_settings


def test_defaults():
    """An empty table gives DESIGN's defaults: sources auto, jump_ratio 1.5, window 5, 3 MADs."""
    s = parse_loss_settings({}, "watch[0].loss", "c.toml")
    assert s == LossSettings()
    assert (s.sources, s.jump_ratio, s.window, s.noise_mads, s.metric) == (("auto",), 1.5, 5, 3.0,
                                                                           DEFAULT_METRICS)


def test_values_taken():
    """Every key is read; a single string is accepted for sources and metric."""
    s = parse_loss_settings({"sources": "logs/*.log", "metric": "train/loss", "jump_ratio": 2, "window": 7,
                             "noise_mads": 0, "mad_floor": 0.1, "min_points": 2, "scratch_fraction": 0.5,
                             "regex": r"it (?P<step>\d+) l=(?P<loss>\S+)"}, "watch[0].loss", "c.toml")
    assert s.sources == ("logs/*.log",) and s.metric == ("train/loss",) and s.jump_ratio == 2.0
    assert (s.window, s.noise_mads, s.mad_floor, s.min_points, s.scratch_fraction) == (7, 0.0, 0.1, 2, 0.5)


@pytest.mark.parametrize("raw,key,why", [
    ({"jumpratio": 2}, "jumpratio", "unknown key"),
    ({"jump_ratio": 1.0}, "jump_ratio", "> 1"),
    ({"jump_ratio": True}, "jump_ratio", "must be a number"),
    ({"window": 0}, "window", ">= 1"),
    ({"window": 2.5}, "window", "whole number"),
    ({"noise_mads": -1}, "noise_mads", ">= 0"),
    ({"min_points": 6}, "min_points", "must not exceed window"),
    ({"sources": []}, "sources", "non-empty"),
    ({"metric": [1]}, "metric", "metric name"),
    ({"scratch_fraction": 1.5}, "scratch_fraction", "(0, 1]"),
    ({"regex": "(unclosed"}, "regex", "not a valid regular expression"),
    ({"regex": r"step (\d+)"}, "regex", "(?P<loss>"),
])
def test_errors_name_file_and_key(raw, key, why):
    """A bad or unknown key raises ConfigError "{file}: {where}.{key}: {why}"."""
    with pytest.raises(ConfigError) as e:
        parse_loss_settings(raw, "watch[3].loss", "/etc/ck.toml")
    msg = str(e.value)
    assert msg.startswith(f"/etc/ck.toml: watch[3].loss.{key}: ") and why in msg
