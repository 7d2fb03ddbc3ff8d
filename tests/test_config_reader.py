"""The typed table reader: each kind, unknown keys, dotted locations, dataclass defaults, overrides."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from dataclasses import dataclass

import pytest

from ckptwatch.config import AlertsConfig, Config, LossSettings, ServiceConfig, WatchConfig
from ckptwatch.config.kinds import Boolean, Duration, Number, OneOf, Path, Size, Strings, Table, Tables, Whole
from ckptwatch.config.reader import Location, override, read_table, setting
from ckptwatch.errors import ConfigError

SRC = "/etc/ck.toml"


@dataclass(frozen=True, kw_only=True)
class Inner:
    ratio: float = setting(Number(1.0, above=True), default=1.5)
    names: tuple[str, ...] = setting(Strings(single=True, non_empty=True), default=("a",))


@dataclass(frozen=True, kw_only=True)
class Item:
    path: str = setting(Path("a directory path", empty=False, absolute=True), doc="the dir to look at")
    inner: Inner | None = setting(Table(Inner, switch="enabled"), default=Inner())


@dataclass(frozen=True, kw_only=True)
class Outer:
    seconds: float = setting(Number(0.0, noun="a number of seconds"), default=60.0)
    wait: float = setting(Duration(), default=1800.0)
    count: int = setting(Whole(1, 10), default=3)
    on: bool = setting(Boolean(), default=False)
    mode: str = setting(OneOf("auto", "json"), default="auto")
    free: int | None = setting(Size(), default=None)
    items: tuple[Item, ...] = setting(Tables(Item, "[[item]] tables"), default=(), key="item")
    low: int = setting(Whole(0), default=1)
    high: int = setting(Whole(0), default=2)

    def checked(self, at: Location) -> Outer:
        if self.low > self.high:
            raise at.key("low").error(f"must not exceed high ({self.high}), not {self.low}")
        return self


def read(raw: dict) -> Outer:
    return read_table(raw, Location(SRC, "outer"), Outer)


def error(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        read(raw)
    return str(err.value)


def test_absent_keys_keep_the_dataclass_defaults() -> None:
    """An empty table is the dataclass with its defaults: the dataclass is the only place they are written."""
    assert read({}) == Outer()
    assert (Outer().seconds, Outer().wait, Outer().items) == (60.0, 1800.0, ())


def test_sections_are_frozen_and_keyword_only() -> None:
    """Every section is frozen (a config is a value) and keyword-only (no positional copy of the fields)."""
    for cls in (Outer, ServiceConfig, WatchConfig, LossSettings, AlertsConfig, Config):
        assert cls.__dataclass_params__.frozen, cls
        assert all(f.kw_only for f in dataclasses.fields(cls)), cls
    with pytest.raises(TypeError):
        ServiceConfig(60.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServiceConfig().settle_seconds = 1


def test_unknown_key_lists_the_known_ones() -> None:
    """A key no field reads is refused, naming its dotted location and every known key (TOML names)."""
    msg = error({"secs": 1})
    assert msg == (f"{SRC}: outer.secs: unknown key (known: count, free, high, item, low, mode, on, seconds, "
                   "wait)")


def test_nested_location_in_the_message() -> None:
    """Errors inside sub-tables and arrays of tables name the full dotted key."""
    assert error({"item": [{"path": "/a"}, {"path": "/b", "inner": {"ratio": 1}}]}) == \
        f"{SRC}: outer.item[1].inner.ratio: must be a number > 1, not 1"
    assert error({"item": [{"path": "/a", "inner": {"nope": 1}}]}).startswith(
        f"{SRC}: outer.item[0].inner.nope: unknown key (known: enabled, names, ratio)")
    assert error({"item": [{}]}) == f"{SRC}: outer.item[0].path: is required: the dir to look at"
    assert error({"item": {"path": "/a"}}) == f"{SRC}: outer.item: must be [[item]] tables"
    assert error({"item": [{"path": "/a", "inner": 3}]}) == f"{SRC}: outer.item[0].inner: must be a table"


def test_top_level_location() -> None:
    """At the file's top level the message is FILE: key: why."""
    with pytest.raises(ConfigError, match=r"^/etc/ck.toml: x: unknown key \(known: "):
        read_table({"x": 1}, Location(SRC), Outer)
    with pytest.raises(ConfigError, match=r"^/etc/ck.toml: must be a table$"):
        read_table([], Location(SRC), Outer)


@pytest.mark.parametrize("raw,value", [
    ({"seconds": 0}, 0.0), ({"seconds": 2.5}, 2.5),
    ({"wait": "30m"}, 1800.0), ({"wait": "2h"}, 7200.0), ({"wait": 90}, 90.0), ({"wait": "45"}, 45.0),
    ({"count": 10}, 10), ({"on": True}, True), ({"mode": "json"}, "json"),
    ({"free": "10GiB"}, 10 * 2**30), ({"free": "50G"}, 50 * 2**30), ({"free": 4096}, 4096),
])
def test_each_kind_converts(raw: dict, value: object) -> None:
    """Numbers become floats, durations and sizes are parsed, whole numbers/bools/choices pass through."""
    [(key, _)] = raw.items()
    got = getattr(read(raw), key)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("raw,message", [
    ({"seconds": -1}, "outer.seconds: must be a number of seconds >= 0, not -1"),
    ({"seconds": True}, "outer.seconds: must be a number of seconds >= 0, not True"),
    ({"seconds": "5"}, "outer.seconds: must be a number of seconds >= 0, not '5'"),
    ({"wait": "soon"}, "outer.wait: 'soon' is not a duration (use e.g. 90, 90s, 30m, 6h, 2d)"),
    ({"wait": False}, 'outer.wait: must be a duration such as "30m", not False'),
    ({"count": 0}, "outer.count: must be a whole number from 1 to 10, not 0"),
    ({"count": 2.0}, "outer.count: must be a whole number from 1 to 10, not 2.0"),
    ({"count": True}, "outer.count: must be a whole number from 1 to 10, not True"),
    ({"on": "yes"}, "outer.on: must be true or false, not 'yes'"),
    ({"mode": "xml"}, "outer.mode: 'xml' is not one of auto, json"),
    ({"free": "lots"}, "outer.free: 'lots' is not a size (use e.g. 50G, 500M, 1T, or a number of bytes)"),
    ({"free": -1}, "outer.free: -1 is negative"),
    ({"item": [{"path": ""}]}, "outer.item[0].path: must be a directory path, not ''"),
    ({"item": [{"path": "/a", "inner": {"names": []}}]},
     "outer.item[0].inner.names: must be a list of non-empty strings, not []"),
    ({"item": [{"path": "/a", "inner": {"enabled": 1}}]},
     "outer.item[0].inner.enabled: must be true or false, not 1"),
])
def test_each_kind_rejects_with_file_key_and_reason(raw: dict, message: str) -> None:
    """A bad value: FILE: dotted.key: why, the why naming the rule and the value given."""
    assert error(raw) == f"{SRC}: {message}"


def test_duration_bounds_and_off() -> None:
    """Duration bounds are checked after parsing; the `off` word reads as infinity for the section to map."""
    kind = Duration(0.0, above=True, maximum=300.0)
    at = Location(SRC, "alerts.timeout")
    assert kind.read("5m", at) == 300.0
    with pytest.raises(ConfigError, match=r"alerts.timeout: must be a duration in \(0, 300\], not '6m'"):
        kind.read("6m", at)
    assert Duration(0.0, above=True, off="off").read("off", at) == math.inf


def test_paths_are_expanded_and_made_absolute(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: pathlib.Path) -> None:
    """`~` is expanded; a path that must be absolute is resolved against the working directory."""
    monkeypatch.setenv("HOME", "/home/u")
    monkeypatch.chdir(tmp_path)
    cfg = read({"item": [{"path": "~/runs"}, {"path": "rel"}]})
    assert [i.path for i in cfg.items] == ["/home/u/runs", os.path.join(str(tmp_path), "rel")]
    assert Path("a file path").read("~/f", Location(SRC, "k")) == "/home/u/f"


def test_strings_single_and_list() -> None:
    """`single`: one string stands for a list of one; the result is a tuple."""
    cfg = read({"item": [{"path": "/a", "inner": {"names": "x"}},
                         {"path": "/b", "inner": {"names": ["x", "y"]}}]})
    assert [i.inner.names for i in cfg.items] == [("x",), ("x", "y")]


def test_sub_table_switch_and_defaults() -> None:
    """An absent sub-table keeps its default instance; `enabled = false` makes it None; keys are read."""
    cfg = read({"item": [{"path": "/a"}, {"path": "/b", "inner": {"enabled": False}},
                         {"path": "/c", "inner": {"ratio": 3}}]})
    assert [i.inner for i in cfg.items] == [Inner(), None, Inner(ratio=3.0)]


def test_checked_hook_runs_with_the_location() -> None:
    """Cross-key rules run after every key was read and name their key."""
    assert error({"low": 5, "high": 4}) == f"{SRC}: outer.low: must not exceed high (4), not 5"
    assert read({"low": 4, "high": 4}).low == 4


def test_override_by_key() -> None:
    """override() replaces keys through their kinds; None means "not given"; nested keys are dotted."""
    base = read({"item": [{"path": "/a"}]})
    assert override(base, {"seconds": 5, "wait": None}) == dataclasses.replace(base, seconds=5.0)
    assert override(base, {"wait": "1h"}).wait == 3600.0
    assert override(Item(path="/a"), {"inner.ratio": 2}).inner == Inner(ratio=2.0)
    assert override(Config(source="x"), {"service.settle_seconds": 5}).service == \
        ServiceConfig(settle_seconds=5.0)
    with pytest.raises(ConfigError, match=r"^command line: seconds: must be a number of seconds >= 0"):
        override(base, {"seconds": -1})
    with pytest.raises(ConfigError, match=r"^command line: low: must not exceed high"):
        override(base, {"low": 9})
    with pytest.raises(KeyError):
        override(base, {"secs": 1})
