"""The service's rescan over a cached root (issue 13): reused verdicts are exactly the ones a fresh pass
builds, and a verdict that depends on the clock is never reused.

The rescan reuses a settled checkpoint's last verdict when its files' fingerprint, its judgement and
the run-level inputs are unchanged; these tests pin down what must still be decided afresh.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from ckptwatch import engine
from ckptwatch.engine import RootReport, check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.model import Status
from ckptwatch.scan import MAX_TREE_DEPTH, PIN_NAME, quick_digest, tree
from tests.helpers import verdicts_by_name

pytestmark = pytest.mark.slow


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(path):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (old, old), follow_symlinks=False)
    os.utime(path, (old, old))


def _primed(run: Path, opts: CheckOptions) -> tuple[dict, float, RootReport]:
    """``run`` aged an hour, then judged once into a fresh cache: (the cache, that pass's now, its report)."""
    _age(run, 3600)
    cache: dict = {}
    now = time.time()
    return cache, now, check_root(str(run), opts, now, cache=cache)


def test_cached_rescan_gives_the_verdicts_of_a_fresh_pass(artefact, monkeypatch) -> None:
    run = artefact("hf_full")
    opts = CheckOptions(settle_seconds=60, second_look=True)
    cache, now, first = _primed(run, opts)
    built = []
    real = engine.checkpoint_hazards
    monkeypatch.setattr(engine, "checkpoint_hazards", lambda cf: built.append(cf.path) or real(cf))
    again = check_root(str(run), opts, now + 5, cache=cache)
    assert first.runs[0].checkpoints and built == [], "a settled, unchanged checkpoint's verdict is reused"
    fresh = check_root(str(run), opts, now + 5)
    assert len(built) == len(first.runs[0].checkpoints)  # a pass without the cache builds each verdict
    assert again.runs == fresh.runs == first.runs


def test_a_reused_verdict_is_still_checked_against_the_clock(artefact) -> None:
    """A pass whose ``now`` is within settle_seconds of the newest write (a clock stepped back) says
    in_progress, even though the checkpoint's judgement and verdict are cached."""
    run = artefact("hf_full")
    opts = CheckOptions(settle_seconds=60)
    cache, now, _ = _primed(run, opts)
    newest = max(v.newest_mtime for v in check_root(str(run), opts, now, cache=cache).runs[0].checkpoints)
    early = check_root(str(run), opts, newest + 1, cache=cache)
    assert {v.status for v in early.runs[0].checkpoints} == {Status.IN_PROGRESS}
    assert check_root(str(run), opts, now, cache=cache).runs == check_root(str(run), opts, now).runs


def test_a_temp_file_verdict_is_rejudged_as_time_passes(artefact) -> None:
    """A writer's temp file makes the checkpoint in_progress; once it is older than stale_after the same,
    unchanged files give abandoned_temp: such a verdict is never reused from the cache."""
    run = artefact("hf_full")
    (run / "checkpoint-6" / "model.safetensors.tmpabc123").write_bytes(b"partial")
    _age(run, 600)
    opts = CheckOptions(settle_seconds=60, stale_after=1800)
    cache: dict = {}
    now = time.time()
    before = verdicts_by_name(check_root(str(run), opts, now, cache=cache).runs[0])["checkpoint-6"]
    assert before.status is Status.IN_PROGRESS
    assert "abandoned_temp" not in {p.kind for p in before.problems}
    later = verdicts_by_name(check_root(str(run), opts, now + 3600, cache=cache).runs[0])["checkpoint-6"]
    assert "abandoned_temp" in {p.kind for p in later.problems}
    fresh = verdicts_by_name(check_root(str(run), opts, now + 3600).runs[0])["checkpoint-6"]
    assert later == fresh


# ---------------------------------------------------------------------------------------------------
# The quick re-check (scan.quick_digest): a kept verdict is reused only while the digest of its files,
# computed without building the listing, is the one the judged look had; anything else walks in full.


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _ckpt_dirs(run: Path) -> list[Path]:
    return sorted(p for p in run.iterdir() if p.is_dir() and p.name.startswith(("checkpoint-", "iter_")))


@pytest.mark.parametrize("name", ["hf_full", "megatron_legacy"])
def test_quick_digest_is_the_one_tree_computes_and_follows_every_change(artefact, name: str) -> None:
    """On real checkpoints (Megatron's has a directory per rank inside): the quick walk's digest is the one
    ``tree`` computes from its own stat results, and both change with a file's mtime."""
    run = artefact(name)
    ckpts = _ckpt_dirs(run)
    assert ckpts
    (ckpts[0] / PIN_NAME).write_bytes(b"")  # a user's pin: no part of the checkpoint, nor of either digest
    for ckpt in ckpts:
        quick = quick_digest(str(ckpt))
        assert quick is not None and quick == tree(str(ckpt), str(run)).quick
    deepest = max((p for p in ckpts[-1].rglob("*") if p.is_file()), key=lambda p: len(p.parts))
    before = quick_digest(str(ckpts[-1]))
    st = deepest.stat()
    os.utime(deepest, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    after = quick_digest(str(ckpts[-1]))
    assert after != before and after == tree(str(ckpts[-1]), str(run)).quick


def _link_to_file(ckpt: Path) -> None:
    os.symlink("config.json", ckpt / "linked.json")


def _link_to_dir(ckpt: Path) -> None:
    (ckpt.parent / "elsewhere").mkdir()
    os.symlink("../elsewhere", ckpt / "sub")


def _fifo(ckpt: Path) -> None:
    os.mkfifo(ckpt / "optimizer.pt.fifo")


def _non_utf8(ckpt: Path) -> None:
    with open(os.path.join(os.fsencode(ckpt), b"bad\xffname.json"), "wb") as f:
        f.write(b"{}")


def _too_deep(ckpt: Path) -> None:
    os.makedirs(ckpt / os.path.join(*["d"] * (MAX_TREE_DEPTH + 1)))


@pytest.mark.parametrize("make", [_link_to_file, _link_to_dir, _fifo, _non_utf8, _too_deep])
def test_quick_digest_gives_up_where_only_the_full_walk_judges(artefact, make) -> None:
    """A link (to a file or a directory), a FIFO, a name that is not UTF-8, a tree nested too deep: the quick
    walk gives None (the caller walks with ``tree``), ``tree`` records no quick digest, and no descriptor is
    left open."""
    run = artefact("hf_full")
    ckpt = _ckpt_dirs(run)[0]
    make(ckpt)
    fds = _fds()
    assert quick_digest(str(ckpt)) is None
    assert _fds() == fds
    assert tree(str(ckpt), str(run)).quick is None


def test_quick_digest_of_a_link_a_file_or_nothing_is_none(artefact, tmp_path: Path) -> None:
    """The checkpoint path itself a symlink to a directory (never followed here), a file, or gone."""
    run = artefact("hf_full")
    ckpt = _ckpt_dirs(run)[0]
    link = tmp_path / "link"
    os.symlink(ckpt, link)
    fds = _fds()
    assert quick_digest(str(link)) is None
    assert quick_digest(str(ckpt / "config.json")) is None
    assert quick_digest(str(run / "checkpoint-999")) is None
    assert _fds() == fds


def _corrupt_header(path: Path) -> None:
    """The safetensors header length overwritten in place: same inode, size and mtime; only ctime moves."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"\xff" * 8)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _rewrite_in_place(ckpt: Path) -> None:
    _corrupt_header(ckpt / "model.safetensors")


def _replace_inode(ckpt: Path) -> None:
    """``cp -p`` of a damaged copy over the file (rsync -t alike): same name, size and mtime, new inode."""
    target = ckpt / "model.safetensors"
    copy = ckpt.parent / "copy.safetensors"
    shutil.copy2(target, copy)
    _corrupt_header(copy)
    st, dst = target.stat(), ckpt.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(copy, target)
    os.utime(ckpt, ns=(dst.st_atime_ns, dst.st_mtime_ns))  # only the file's inode (and ctime) tell


def _new_file(ckpt: Path) -> None:
    """A writer's temp file appears; the directory's mtime is set back, so only the file itself tells."""
    st = ckpt.stat()
    (ckpt / "model.safetensors.tmpabc123").write_bytes(b"partial")
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))


def _swap_for_link(ckpt: Path) -> None:
    """The weights replaced by a link to an identical copy outside the run: unsafe, never read."""
    target = ckpt / "model.safetensors"
    outside = ckpt.parent.parent / "outside.safetensors"
    shutil.copy2(target, outside)
    st = ckpt.stat()
    target.unlink()
    os.symlink(outside, target)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("change", [_rewrite_in_place, _replace_inode, _new_file, _swap_for_link])
def test_kept_verdict_is_not_reused_after_a_change_the_quick_walk_must_see(artefact, change) -> None:
    """A settled checkpoint's kept verdict, re-checked by the quick digest: a file rewritten in place (only
    its ctime differs), replaced by a copy with the same size and mtime (a new inode), a new file with
    the directory's mtime set back, a file swapped for a link. The rescan gives what a fresh pass gives,
    and that differs from the kept verdict."""
    run = artefact("hf_full")
    opts = CheckOptions(settle_seconds=60, second_look=True)
    cache, now, _ = _primed(run, opts)
    kept = verdicts_by_name(check_root(str(run), opts, now, cache=cache).runs[0])["checkpoint-4"]
    assert kept.status is Status.COMPLETE
    change(run / "checkpoint-4")
    again = check_root(str(run), opts, now + 5, cache=cache)
    fresh = check_root(str(run), opts, now + 5)
    assert again.runs == fresh.runs
    assert verdicts_by_name(again.runs[0])["checkpoint-4"] != kept


def test_a_nested_rank_file_rewritten_in_place_is_seen(artefact) -> None:
    """Megatron's per-rank directories: a file two levels down rewritten in place (same size and mtime)."""
    run = artefact("megatron_legacy")
    opts = CheckOptions(settle_seconds=60, second_look=True)
    cache, now, _ = _primed(run, opts)
    kept = check_root(str(run), opts, now, cache=cache).runs[0].checkpoints
    rank_file = sorted((_ckpt_dirs(run)[-1]).rglob("*.pt"))[-1]
    st = rank_file.stat()
    with open(rank_file, "r+b") as f:
        f.write(b"\0" * 64)
    os.utime(rank_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = check_root(str(run), opts, now + 5, cache=cache)
    assert again.runs == check_root(str(run), opts, now + 5).runs
    assert again.runs[0].checkpoints != kept


def test_unchanged_rescan_walks_no_kept_checkpoint_in_full(artefact, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick path is taken: an unchanged rescan calls ``tree`` for no checkpoint whose verdict is kept,
    and a changed one is walked in full again (and only it)."""
    import ckptwatch.engine as engine

    run = artefact("hf_full")
    opts = CheckOptions(settle_seconds=60, second_look=True)
    cache, now, _ = _primed(run, opts)
    check_root(str(run), opts, now, cache=cache)
    walked: list[str] = []
    real = engine.tree

    def counting(path: str, root: str):
        walked.append(os.path.basename(path))
        return real(path, root)

    monkeypatch.setattr(engine, "tree", counting)
    check_root(str(run), opts, now + 5, cache=cache)
    assert walked == []
    _rewrite_in_place(run / "checkpoint-6")
    check_root(str(run), opts, now + 5, cache=cache)
    assert set(walked) == {"checkpoint-6"}  # walked, and walked again by the second look


def test_run_inputs_changed_under_a_quick_recheck_rejudge_the_run(artefact) -> None:
    """Kept verdicts re-checked quickly, then a run-level input changes (``expected_ranks``): the run is
    judged again with full walks, as a fresh pass judges it."""
    run = artefact("hf_full")
    opts = CheckOptions(settle_seconds=60, second_look=True)
    cache, now, _ = _primed(run, opts)
    check_root(str(run), opts, now, cache=cache)
    keys = {path: e.key for path, e in cache.items()}
    wider = CheckOptions(settle_seconds=60, second_look=True, expected_ranks=4)
    again = check_root(str(run), wider, now + 5, cache=cache)
    fresh = check_root(str(run), wider, now + 5)
    assert again.runs == fresh.runs
    assert all(e.key is not None and e.key != keys[path] for path, e in cache.items())  # rebuilt, new input


def test_quick_digest_gives_up_below_the_top_and_closes_every_descriptor(artefact) -> None:
    """Megatron's per-rank directories: a FIFO in one, then that directory swapped for a link to a copy
    (never followed): None each time, with no descriptor left open; ``tree`` records no quick digest."""
    run = artefact("megatron_legacy")
    ckpt = _ckpt_dirs(run)[-1]
    rank = sorted(p for p in ckpt.iterdir() if p.is_dir())[-1]
    fds = _fds()
    os.mkfifo(rank / "extra.pt")
    assert quick_digest(str(ckpt)) is None and _fds() == fds
    assert tree(str(ckpt), str(run)).quick is None
    os.unlink(rank / "extra.pt")
    shutil.copytree(rank, run / "copy")
    shutil.rmtree(rank)
    os.symlink(run / "copy", rank)
    assert quick_digest(str(ckpt)) is None and _fds() == fds
    assert tree(str(ckpt), str(run)).quick is None
