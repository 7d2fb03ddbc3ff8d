"""`ckptwatch once` reports the loss watch: `loss.resumes` in --json, a LOSS JUMP line in the table, exit 1.

The runs are real (transformers Trainer + PEFT, Lightning with its CSVLogger), interrupted and resumed in
a second process by the `loss` builders; the engine's run root must be the one whose logs hold the loss.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["loss_hf_resume_stub", "loss_lightning_resume_fresh"])
def test_once_reports_the_jump_of_a_broken_resume(artefact, name: str) -> None:
    """A resume that lost the trained weights: `loss.resumes[0]` has both numbers, alert true; exit 1."""
    out = run_cli("once", "--json", str(artefact(name)))
    assert out.returncode == 1, out.stderr
    runs = [r for r in json.loads(out.stdout)["runs"] if r.get("loss", {}).get("resumes")]
    assert len(runs) == 1, [(r["root"], r.get("loss")) for r in json.loads(out.stdout)["runs"]]
    (resume,) = runs[0]["loss"]["resumes"]
    assert resume["alert"] is True and resume["scratch"] is True
    assert resume["after"] / resume["before"] == pytest.approx(resume["ratio"], rel=1e-3)
    assert resume["ratio"] > 3


def test_once_table_and_no_loss_flag(artefact) -> None:
    """The table names the jump; --no-loss leaves the loss watch out (no `loss` key)."""
    run = artefact("loss_hf_resume_fresh")
    table = run_cli("once", str(run))
    assert table.returncode == 1 and "LOSS JUMP at step 21:" in table.stdout
    quiet = run_cli("once", "--json", "--no-loss", str(run))
    assert all("loss" not in r for r in json.loads(quiet.stdout)["runs"])


def test_once_correct_resume_is_clean(artefact) -> None:
    """The right resume_from_checkpoint: a resume is listed, no alert, exit 0."""
    out = run_cli("once", "--json", str(artefact("loss_hf_resume_ok")))
    assert out.returncode == 0, out.stdout[-2000:]
    (run,) = json.loads(out.stdout)["runs"]
    (resume,) = run["loss"]["resumes"]
    assert resume["alert"] is False and 0.7 < resume["ratio"] < 1.3
