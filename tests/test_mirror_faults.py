"""What must never pass for a backup, on real checkpoints: tampered or uncommitted copies, sources that
changed after (or during) their copy, incomplete checkpoints, hazards; and a resumed partial copy."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.copy import mirror_checkpoint, mirror_run, upload_order
from ckptwatch.mirror.restore import verify_copy
from ckptwatch.mirror.target import LocalTarget
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # real Trainer and DCP runs are built

OPTS = CheckOptions(settle_seconds=0)


def _run(root: Path):
    [run] = check_root(str(root), OPTS, time.time()).runs
    return run


def _committed(artefact, tmp_path: Path, name: str = "dcp") -> tuple[Path, Path]:
    run = artefact(name)
    to = tmp_path / "backup"
    outcomes = mirror_run(_run(run), LocalTarget(str(to)), MirrorConfig(to=str(to)), now=time.time())
    assert {o.result for o in outcomes} == {"committed"}, outcomes
    return run, to


def _results(stdout: str) -> dict[str, dict]:
    """Checkpoint name -> its outcome, from `mirror --json` of one run."""
    [run] = json.loads(stdout)["runs"]
    return {os.path.basename(c["checkpoint"]): c for c in run["mirror"]["checkpoints"]}


def _flip(path: Path, at: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("tamper", ["flip", "truncate", "delete"])
def test_tampered_copy_is_refused_naming_the_file(artefact, tmp_path, tamper):
    """A committed copy with one byte flipped, a file truncated or a file deleted: `restore` and
    `verify COPY` both refuse, naming that file; DEST is not created."""
    _, to = _committed(artefact, tmp_path)
    copy = to / "dcp" / "step_200"
    victim = copy / "__2_0.distcp"
    if tamper == "flip":
        _flip(victim)
    elif tamper == "truncate":
        os.truncate(victim, victim.stat().st_size // 2)
    else:
        victim.unlink()
    dest = tmp_path / "restored" / "step_200"
    dest.parent.mkdir()
    r = run_cli("restore", str(copy), str(dest))
    assert r.returncode == 1
    assert str(victim) in r.stderr
    assert not dest.exists() and os.listdir(dest.parent) == []  # no staging dir left either
    v = run_cli("verify", str(copy), "--json")
    assert v.returncode == 1
    findings = json.loads(v.stdout)["findings"]
    assert [f["file"] for f in findings] == [str(victim)]
    assert findings[0]["kind"] == {"flip": "hash", "truncate": "size", "delete": "missing"}[tamper]


def test_edited_manifest_or_missing_marker_is_no_backup(artefact, tmp_path):
    """A manifest changed after the commit (its marker no longer matches) and a copy without its marker
    are both refused, naming the marker."""
    _, to = _committed(artefact, tmp_path)
    edited = to / "dcp" / "step_300"
    doc = json.loads((edited / mf.MANIFEST_NAME).read_text())
    doc["files"][1]["hash"] = "0" * 64
    (edited / mf.MANIFEST_NAME).write_text(json.dumps(doc))
    unmarked = to / "dcp" / "step_100"
    (unmarked / mf.MARKER_NAME).unlink()
    for copy, kind in ((edited, "broken"), (unmarked, "not_committed")):
        manifest, findings = verify_copy(LocalTarget(str(copy)))
        assert manifest is None
        assert [(f.kind, f.file) for f in findings] == [(kind, str(copy / mf.MARKER_NAME))]
        r = run_cli("restore", str(copy), str(tmp_path / f"r-{copy.name}"))
        assert r.returncode == 1 and mf.MARKER_NAME in r.stderr
        assert not (tmp_path / f"r-{copy.name}").exists()


def test_file_added_to_a_copy_is_reported(artefact, tmp_path):
    """A file that is in a committed copy but not in its manifest is named by verify."""
    _, to = _committed(artefact, tmp_path)
    extra = to / "dcp" / "step_300" / "__4_0.distcp"
    extra.write_bytes(b"x" * 10)
    _, findings = verify_copy(LocalTarget(str(to / "dcp" / "step_300")))
    assert [(f.kind, f.file) for f in findings] == [("unexpected", str(extra))]


def test_source_changed_after_commit_is_a_conflict(artefact, tmp_path):
    """A source file rewritten after its copy was committed: `mirror` reports a conflict naming the
    file, exits 1 and writes nothing (the copy still verifies, every file untouched)."""
    run, to = _committed(artefact, tmp_path)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (to / "dcp").rglob("*")}
    src = run / "step_300" / "__1_0.distcp"
    _flip(src, 500)
    os.utime(run / "step_300" / ".metadata")  # as a re-save would: .metadata written last, so complete
    r = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json")
    assert r.returncode == 1
    results = _results(r.stdout)
    assert results["step_300"]["result"] == "conflict"
    assert str(src) in results["step_300"]["reason"]
    assert results["step_200"]["result"] == results["step_100"]["result"] == "up_to_date"
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (to / "dcp").rglob("*")} == before
    assert verify_copy(LocalTarget(str(to / "dcp" / "step_300")))[1] == []


def test_touched_but_identical_source_is_up_to_date(artefact, tmp_path):
    """A source file whose mtime changed but whose bytes did not is re-hashed and found up to date."""
    run, to = _committed(artefact, tmp_path)
    src = run / "step_300" / "__0_0.distcp"
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    outcomes = mirror_run(_run(run), LocalTarget(str(to)), MirrorConfig(to=str(to)), now=time.time())
    assert [o.result for o in outcomes] == ["up_to_date"] * 3


def test_incomplete_checkpoint_is_not_mirrored(artefact, tmp_path):
    """A DCP checkpoint missing a rank's shard is incomplete: skipped with that reason, no copy made; the
    complete ones are mirrored."""
    run = artefact("dcp")
    (run / "step_300" / "__3_0.distcp").unlink()
    to = tmp_path / "backup"
    r = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json")
    assert r.returncode == 0, r.stdout
    results = _results(r.stdout)
    assert results["step_300"]["result"] == "skipped"
    assert results["step_300"]["reason"].startswith("incomplete")
    assert not (to / "dcp" / "step_300").exists()
    assert results["step_200"]["result"] == "committed"


def test_blocking_hazard_is_skipped_unless_asked(artefact, tmp_path):
    """A complete checkpoint whose resume would load the wrong weights (a stub beside the adapter) is not
    mirrored by default (exit 1, the hazard named); --mirror-hazards mirrors it."""
    run = artefact("hf_lora_stub")
    stub, marker = run / "checkpoint-6" / "pytorch_model.bin", run / "checkpoint-6" / "trainer_state.json"
    # the stub dated like the rest of its save, as in test_latest_blocks: complete, and a blocking hazard
    os.utime(stub, ns=(marker.stat().st_atime_ns, marker.stat().st_mtime_ns))
    to = tmp_path / "backup"
    r = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--json")
    assert r.returncode == 1
    results = _results(r.stdout)
    assert results["checkpoint-6"]["result"] == "skipped"
    assert "wrong weights" in results["checkpoint-6"]["reason"]
    assert not (to / run.name / "checkpoint-6").exists()
    r = run_cli("mirror", str(run), "--to", str(to), "--settle", "0", "--mirror-hazards", "--json")
    assert r.returncode == 0
    assert (to / run.name / "checkpoint-6" / mf.MARKER_NAME).is_file()


def test_markers_go_up_after_the_data(artefact, tmp_path):
    """The layout's completion marker is copied after every data file (DCP .metadata, Trainer
    trainer_state.json), so a half-copied checkpoint never looks complete to its framework."""
    for name, marker in (("dcp", ".metadata"), ("hf_full", "trainer_state.json")):
        run = artefact(name)
        to = tmp_path / f"backup-{name}"
        v = _run(run).checkpoints[-1]
        order: list[str] = []
        out = mirror_checkpoint(v, str(run), LocalTarget(str(to)), MirrorConfig(to=str(to), parallel=1),
                                now=time.time(), progress=order.append)
        assert out.result == "committed"
        assert order[-1] == marker and len(order) == out.files
    assert upload_order(["b/.metadata", "trainer_state.json", "a.bin", "latest", "z/c.bin"]) == \
        ["a.bin", "z/c.bin", "b/.metadata", "trainer_state.json", "latest"]


class _Stop(Exception):
    pass


def test_interrupted_copy_resumes_file_by_file(artefact, tmp_path):
    """A copy stopped after some files leaves no marker (not a backup: restore refuses); the next pass
    keeps the files already verified in place, copies the rest and commits."""
    run = artefact("hf_full")
    to = tmp_path / "backup"
    target = LocalTarget(str(to))
    v = _run(run).checkpoints[-1]
    seen: list[str] = []

    def stop_after_four(rel: str) -> None:
        seen.append(rel)
        if len(seen) == 4:
            raise _Stop

    with pytest.raises(_Stop):
        mirror_checkpoint(v, str(run), target, MirrorConfig(to=str(to), parallel=1), now=time.time(),
                          progress=stop_after_four)
    copy = to / run.name / v.path.rsplit("/", 1)[-1]
    assert not (copy / mf.MARKER_NAME).exists()
    assert mf.copy_state(target, f"{run.name}/checkpoint-6").state == "partial"
    r = run_cli("restore", str(copy), str(tmp_path / "r"))
    assert r.returncode == 1 and "not a backup" in r.stderr
    out = mirror_checkpoint(v, str(run), target, MirrorConfig(to=str(to), verify="full"), now=time.time())
    assert out.result == "committed"
    assert out.resumed >= 1 and out.resumed + out.copied == out.files
    assert not (copy / mf.JOURNAL_NAME).exists()
    assert verify_copy(LocalTarget(str(copy)))[1] == []


def test_source_changed_during_copy_is_not_committed(artefact, tmp_path):
    """A source file rewritten while the copy is under way (after it was copied): the copy fails naming
    the file, and nothing is committed; once the source is stable again, a new pass commits it."""
    run = artefact("dcp")
    to = tmp_path / "backup"
    v = _run(run).checkpoints[-1]
    victim = run / "step_300" / "__0_0.distcp"
    done: list[str] = []

    def rewrite_first(rel: str) -> None:
        done.append(rel)
        if len(done) == 2:
            _flip(victim, 50)

    out = mirror_checkpoint(v, str(run), LocalTarget(str(to)), MirrorConfig(to=str(to), parallel=1),
                            now=time.time(), progress=rewrite_first)
    assert out.result == "failed"
    assert str(victim) in out.reason
    assert not (to / "dcp" / "step_300" / mf.MARKER_NAME).exists()
    again = mirror_checkpoint(v, str(run), LocalTarget(str(to)), MirrorConfig(to=str(to)), now=time.time())
    assert again.result == "committed"
    _, findings = verify_copy(LocalTarget(str(to / "dcp" / "step_300")))
    assert findings == []
    assert (to / "dcp" / "step_300" / "__0_0.distcp").read_bytes() == victim.read_bytes()


def test_leftovers_of_a_kill_after_commit_are_tidied(artefact, tmp_path):
    """A journal and a temp file left in a committed copy (a kill after the marker) are removed by the
    next pass, which leaves the checkpoint's files and the commit alone."""
    run, to = _committed(artefact, tmp_path)
    copy = to / "dcp" / "step_300"
    (copy / mf.JOURNAL_NAME).write_text("{}")
    (copy / ".__0_0.distcp.ckptwatch-tmp-1-abc").write_bytes(b"partial")
    before = {p.name: p.stat().st_ino for p in copy.iterdir()}
    outcomes = mirror_run(_run(run), LocalTarget(str(to)), MirrorConfig(to=str(to)), now=time.time())
    assert [o.result for o in outcomes] == ["up_to_date"] * 3
    after = {p.name: p.stat().st_ino for p in copy.iterdir()}
    assert after == {k: v for k, v in before.items() if k != mf.JOURNAL_NAME and "ckptwatch-tmp" not in k}


def test_same_size_and_mtime_but_other_bytes_is_a_conflict(artefact, tmp_path):
    """A source file replaced by one of the same size with its old mtime put back (rsync -t, cp -p) is
    still caught (its ctime and inode moved): re-hashed, and a conflict."""
    run, to = _committed(artefact, tmp_path)
    src = run / "step_200" / "__3_0.distcp"
    st = src.stat()
    data = bytearray(src.read_bytes())
    data[-10] ^= 0xFF
    replacement = src.with_name("new")
    replacement.write_bytes(bytes(data))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, src)
    outcomes = {os.path.basename(o.checkpoint): o for o in
                mirror_run(_run(run), LocalTarget(str(to)), MirrorConfig(to=str(to)), now=time.time())}
    assert outcomes["step_200"].result == "conflict"
    assert str(src) in outcomes["step_200"].reason


def test_stale_marker_of_an_earlier_attempt_is_removed_before_the_data(artefact, tmp_path):
    """A partial copy holding a completion marker (.metadata) that must be copied again: the marker is
    gone from the copy while the data files are rewritten, so the half-made copy never looks complete."""
    run = artefact("dcp")
    to = tmp_path / "backup"
    target = LocalTarget(str(to))
    v = _run(run).checkpoints[-1]
    copy = to / "dcp" / "step_300"
    copy.mkdir(parents=True)
    (copy / ".metadata").write_bytes(b"stale marker of an earlier attempt")
    seen_marker: list[bool] = []
    out = mirror_checkpoint(v, str(run), target, MirrorConfig(to=str(to), parallel=1), now=time.time(),
                            progress=lambda rel: seen_marker.append((copy / ".metadata").exists()))
    assert out.result == "committed"
    assert seen_marker[:-1] == [False] * (out.files - 1) and seen_marker[-1] is True
    assert (copy / ".metadata").read_bytes() == (run / "step_300" / ".metadata").read_bytes()
