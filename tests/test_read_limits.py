"""The per-file budget (formats/limits.py), the safe message text (formats/_show.py) and their config keys."""

from __future__ import annotations

import time

import pytest

from ckptwatch.config import ServiceConfig, load_config
from ckptwatch.errors import ConfigError
from ckptwatch.formats._show import show, show_brief, show_int, show_shape
from ckptwatch.formats.limits import (
    LimitExceeded,
    ReadLimits,
    default_limits,
    file_budget,
    limits_in_force,
    reserve,
    tick,
    unmetered,
)


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_show_never_raises_on_hostile_values():
    """Huge integers, deep nesting and long containers render short, in bounded time."""
    deep: list = []
    cur = deep
    for _ in range(200_000):
        cur.append([])
        cur = cur[0]
    assert show(deep) == "[[[[...]]]]"
    assert show_int(10 ** 5000) == "a 5001-digit integer of 16610 bits"
    assert show_int(-(10 ** 60)) == "a negative 61-digit integer of 200 bits"
    assert show_int(2 ** 63 - 1) == str(2 ** 63 - 1)
    assert show_shape((4096, 10 ** 5000)) == "[4096, a 5001-digit integer of 16610 bits]"
    started = time.monotonic()
    assert show(set(range(1_000_000))).endswith("... 999992 more}")
    assert time.monotonic() - started < 1.0
    assert len(show("x" * 1_000_000)) <= 80


def test_show_brief_names_what_a_non_scalar_is():
    """A value named in passing: scalars shown (bounded), containers and pickle stubs only by their kind."""
    from ckptwatch.formats.pickle_stub import walk_pickle

    looped: list = []
    looped.append(looped)
    assert show_brief(looped) == "a list"
    assert show_brief((1, 2)) == "a tuple"
    assert show_brief("storage") == "'storage'"
    assert show_brief(10 ** 5000) == "a 5001-digit integer of 16610 bits"
    assert len(show_brief("x" * 1_000_000)) <= 40
    stub = walk_pickle(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", what="t").obj
    assert show_brief(stub) == "a os.system object" and show(stub) == "<os.system>"


def test_deadline_is_cpu_time_of_the_file():
    with limits_in_force(ReadLimits(0.05, 1 << 30)), file_budget("f.bin"):
        tick()
        time.sleep(0.1)  # waiting is not the file's cost
        tick()
        _spin(0.08)
        with pytest.raises(LimitExceeded) as exc:
            tick("records")
    assert exc.value.kind == "exceeds_limits" and "f.bin" in exc.value.message
    assert "records" in exc.value.message and "max_seconds_per_file" in exc.value.message


def test_streaming_and_inner_files_do_not_count_against_the_outer_file():
    with limits_in_force(ReadLimits(0.05, 1 << 30)), file_budget("outer"):
        with unmetered():
            _spin(0.1)
        tick()
        with pytest.raises(LimitExceeded), file_budget("inner"):
            _spin(0.1)
            tick()
        tick()  # the inner file's 0.1 s were its own


def test_reserve_and_measured_growth():
    with limits_in_force(ReadLimits(60, 64 << 20)), file_budget("big.json"):
        reserve(32 << 20, "a header")
        with pytest.raises(LimitExceeded, match="max_memory_per_file"):
            reserve(65 << 20, "parsing it")
        _spin(0.03)  # the RSS is looked at every 20 ms of CPU; the first look sets the baseline
        tick()
        hog = bytearray(200 << 20)
        hog[::4096] = b"\1" * len(hog[::4096])  # touched: resident
        _spin(0.03)
        with pytest.raises(LimitExceeded, match="grew memory"):
            tick()
        del hog


def test_outside_a_file_tick_and_reserve_do_nothing():
    tick()
    reserve(1 << 50, "anything")


def test_defaults_come_from_the_service_section():
    service = ServiceConfig()
    assert default_limits() == ReadLimits(service.max_seconds_per_file, service.max_memory_per_file)
    assert (service.max_seconds_per_file, service.max_memory_per_file) == (5.0, 1 << 30)


def test_config_keys(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[service]\nmax_seconds_per_file = 2.5\nmax_memory_per_file = "2G"\n'
                    f'[[watch]]\npath = "{tmp_path}"\n')
    service = load_config(str(good)).service
    assert (service.max_seconds_per_file, service.max_memory_per_file) == (2.5, 2 << 30)
    for bad, key in (("max_memory_per_file = \"8M\"", "max_memory_per_file"),
                     ("max_seconds_per_file = 0", "max_seconds_per_file")):
        path = tmp_path / "bad.toml"
        path.write_text(f'[service]\n{bad}\n[[watch]]\npath = "{tmp_path}"\n')
        with pytest.raises(ConfigError, match=f"service.{key}"):
            load_config(str(path))
