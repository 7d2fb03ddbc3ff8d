"""The quick commands run with a higher young-generation threshold of the cyclic collector
(``cli._fewer_collections``, a start-up cost measured by bench/startup.py), and leave it as it was."""

from __future__ import annotations

import argparse
import gc

import pytest

from ckptwatch import cli


@pytest.fixture
def seen_threshold(monkeypatch) -> list[tuple[int, ...]]:
    """Every command records the collector's thresholds while it runs, instead of running."""
    seen: list[tuple[int, ...]] = []

    def record(args: argparse.Namespace) -> int:
        seen.append(gc.get_threshold())
        return 0

    monkeypatch.setattr(cli, "COMMANDS", dict.fromkeys(cli.COMMANDS, record))
    return seen


@pytest.mark.parametrize("argv", [["latest", "."], ["verify", "."], ["once", "."]])
def test_a_quick_command_runs_with_the_higher_threshold_and_restores_it(seen_threshold, argv) -> None:
    before = gc.get_threshold()
    assert cli.main(argv) == 0
    assert seen_threshold == [(cli.QUICK_YOUNG_THRESHOLD, *before[1:])]
    assert gc.get_threshold() == before


def test_the_service_and_other_commands_keep_the_threshold(seen_threshold, tmp_path) -> None:
    before = gc.get_threshold()
    assert cli.main(["run", "--config", str(tmp_path / "c.toml")]) == 0
    assert cli.main(["status"]) == 0
    assert seen_threshold == [before, before]


def test_the_threshold_is_restored_when_the_command_fails(monkeypatch) -> None:
    def boom(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, "latest": boom})
    before = gc.get_threshold()
    assert cli.main(["latest", "."]) == cli.EXIT_INTERNAL
    assert gc.get_threshold() == before
