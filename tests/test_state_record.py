"""The state store's record of verdicts (ckptwatch/state.py) on a real Trainer run: what counts as a
change, and the stored fingerprint text, which must stay what earlier versions wrote."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import pytest

from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import Hazard, Problem, Status
from ckptwatch.state import StateStore, _fingerprint

pytestmark = pytest.mark.slow  # a real Trainer run is built


def _old_fingerprint(v) -> str:
    """The formula stored fingerprints were written with (ckptwatch up to stop 16)."""
    return json.dumps([v.status.value, sorted((p.kind, p.file) for p in v.problems),
                       sorted((h.kind, h.file) for h in v.hazards)])


def _report(root):
    return check_root(str(root), CheckOptions(settle_seconds=0), time.time()).runs[0]


def test_fingerprint_text_is_what_earlier_versions_stored(artefact, tmp_path):
    run = _report(artefact("hf_full"))
    assert any(v.problems for v in run.checkpoints)  # the Trainer's pickles carry a finding each
    odd = ["/r/ü-\u202e/x", "/r/new\nline", '/r/"q"\\b', "/r/\x00\x7f\udcff", "/r/日本"]
    verdicts = [*run.checkpoints, dataclasses.replace(
        run.checkpoints[0], status=Status.INCOMPLETE,
        problems=tuple(Problem("missing_file", f, "m") for f in reversed(odd)),
        hazards=(Hazard("stub_beside_adapter", odd[1], "h"), Hazard("a_kind", odd[0], "h")))]
    for v in verdicts:
        assert _fingerprint(v) == _old_fingerprint(v)


def test_record_reports_only_changes_and_follows_a_renamed_run(artefact, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(artefact("hf_full"), root, symlinks=True)
    run = _report(root)
    store = StateStore(str(tmp_path / "state.db"))
    try:
        first = store.record(run, 1.0)
        assert [c.verdict.path for c in first] == [v.path for v in run.checkpoints]
        assert all(c.previous_status is None for c in first)
        assert store.record(run, 2.0) == []
        assert store.changed_paths(list(run.checkpoints)) == set()
        broken = dataclasses.replace(run.checkpoints[-1], status=Status.CORRUPT,
                                     problems=(Problem("truncated", run.checkpoints[-1].path, "m"),))
        report = dataclasses.replace(run, checkpoints=(*run.checkpoints[:-1], broken))
        assert store.changed_paths(list(report.checkpoints)) == {broken.path}
        changes = store.record(report, 3.0)
        assert [(c.verdict.path, c.previous_status) for c in changes] == [(broken.path, "complete")]
        # The same checkpoints reported under another run name: their rows are found, not re-inserted.
        moved = dataclasses.replace(report, root=str(tmp_path / "other"))
        assert store.record(moved, 4.0) == []
        assert store.record(run, 5.0)[0].previous_status == "corrupt"
    finally:
        store.close()
