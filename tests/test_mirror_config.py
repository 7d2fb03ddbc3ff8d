"""``ckptwatch mirror PATH --config FILE`` (the watch holding PATH gives [watch.mirror]; flags override it)
and ``once --config FILE --json``'s ``mirror`` object (each complete checkpoint's copy: committed,
not_yet, failed or skipped, from the target's markers; nothing copied). On a real torch.save run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ckptwatch.mirror import manifest as mf
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # a real torch run is built


def _config(tmp_path: Path, watch: Path, mirror: str | None) -> Path:
    body = f'[[watch]]\npath = "{watch}"\n' + (f"[watch.mirror]\n{mirror}\n" if mirror else "")
    p = tmp_path / "ckptwatch.toml"
    p.write_text(body)
    return p


def _once(config: Path) -> dict:
    r = run_cli("once", "--config", str(config), "--json", "--settle", "0", "--no-loss")
    [run] = json.loads(r.stdout)["runs"]
    return run


def test_mirror_takes_the_watch_mirror_and_flags_override(artefact, tmp_path):
    run = artefact("torch_save")
    backup = tmp_path / "backup"
    config = _config(tmp_path, run, f'to = "{backup}"\nverify = "full"')
    r = run_cli("mirror", str(run), "--config", str(config), "--settle", "0", "--json")
    assert r.returncode == 0, r.stderr
    [item] = json.loads(r.stdout)["runs"]
    assert (item["mirror"]["to"], item["mirror"]["verify"]) == (str(backup), "full")
    assert {c["result"] for c in item["mirror"]["checkpoints"]} == {"committed"}
    assert (backup / run.name / "ckpt_step_20.pt" / mf.MARKER_NAME).is_file()
    other = tmp_path / "other"
    r = run_cli("mirror", str(run), "--config", str(config), "--to", str(other), "--verify", "size",
                "--settle", "0", "--json")
    assert r.returncode == 0, r.stderr
    [item] = json.loads(r.stdout)["runs"]
    assert (item["mirror"]["to"], item["mirror"]["verify"]) == (str(other), "size")
    assert (other / run.name / "ckpt_step_20.pt" / mf.MARKER_NAME).is_file()


def test_mirror_config_errors_say_what_to_do(artefact, tmp_path):
    run = artefact("torch_save")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = _config(tmp_path, elsewhere, f'to = "{tmp_path / "b"}"')
    r = run_cli("mirror", str(run), "--config", str(config))
    assert r.returncode == 2 and "not under any [[watch]] path" in r.stderr and str(config) in r.stderr
    config = _config(tmp_path, run, None)
    r = run_cli("mirror", str(run), "--config", str(config))
    assert r.returncode == 2 and "[watch.mirror]" in r.stderr and "--to" in r.stderr
    r = run_cli("mirror", str(run))
    assert r.returncode == 2 and "--to" in r.stderr


def test_once_json_reports_each_complete_checkpoint_on_the_mirror(artefact, tmp_path):
    """Before a mirror: every complete checkpoint not_yet; after: committed; a copy whose marker was lost
    is not_yet (its lock's writer named when one holds it), one whose marker no longer commits its
    manifest failed; the other JSON keys are unchanged and a watch without [watch.mirror] has no
    ``mirror`` key."""
    run = artefact("torch_save")
    backup = tmp_path / "backup"
    config = _config(tmp_path, run, f'to = "{backup}"')
    before = _once(config)
    complete = [c["path"] for c in before["checkpoints"] if c["status"] == "complete"]
    assert before["mirror"]["to"] == str(backup)
    assert [c["path"] for c in before["mirror"]["checkpoints"]] == complete[::-1]  # newest first
    states = {(c["state"], c["reason"]) for c in before["mirror"]["checkpoints"]}
    assert states == {("not_yet", "no copy yet")}
    assert not backup.exists()  # nothing copied, nothing created
    assert run_cli("mirror", str(run), "--config", str(config), "--settle", "0").returncode == 0
    after = _once(config)
    assert {c["state"] for c in after["mirror"]["checkpoints"]} == {"committed"}
    assert {k: v for k, v in after.items() if k != "mirror"} == \
        {k: v for k, v in before.items() if k != "mirror"}
    (backup / run.name / "ckpt_step_10.pt" / mf.MARKER_NAME).unlink()
    (backup / run.name / "ckpt_step_10.pt" / mf.LOCK_NAME).write_text(
        json.dumps({"pid": 4242, "host": "node-7", "since": 1e9}))
    (backup / run.name / "ckpt_step_20.pt" / mf.MANIFEST_NAME).write_text("{}")
    states = {os.path.basename(c["path"]): c for c in _once(config)["mirror"]["checkpoints"]}
    assert states["ckpt_step_10.pt"]["state"] == "not_yet"
    assert "pid 4242, host node-7, since 2001-09-09T01:46:40Z" in states["ckpt_step_10.pt"]["reason"]
    assert states["ckpt_step_20.pt"]["state"] == "failed"
    assert "does not commit the manifest" in states["ckpt_step_20.pt"]["reason"]
    assert states["legacy_step_30.pt"]["state"] == "committed"
    assert "mirror" not in _once(_config(tmp_path, run, None))
    r = run_cli("once", str(run), "--json", "--settle", "0", "--no-loss")
    assert "mirror" not in json.loads(r.stdout)["runs"][0]
