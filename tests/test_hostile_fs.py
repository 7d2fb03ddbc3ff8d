"""Hostile and odd filesystem shapes (issue 10 section 4; DESIGN.md invariants 7 and 8).

Every case is a real file of that shape in a real checkpoint written by the real framework: FIFOs made
with ``os.mkfifo``, real symlinks (loops, dangling, out of the run), directories where files belong,
names with a newline or bytes that are not UTF-8. The CLI runs in a child with a timeout, so a hang
fails the test instead of blocking it; the service is driven in-process.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ckptwatch.layouts.base import CheckOptions
from tests.helpers import REPO, kinds_of, make_daemon, run_cli, two_trainer_runs, verdicts_by_name

HANG_LIMIT = 60  # seconds; every case takes about 2 s, a FIFO opened for reading blocks for ever


@pytest.fixture(autouse=True)
def _no_hang():
    """An in-process read that blocks (a FIFO opened for reading) fails the test after HANG_LIMIT."""

    def hung(signum, frame):
        raise TimeoutError(f"blocked for {HANG_LIMIT} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_LIMIT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _once(path: Path) -> tuple[int, dict]:
    p = run_cli("once", str(path), "--json", "--no-loss", "--settle", "0", timeout=HANG_LIMIT)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)


def _checkpoint(doc: dict, name: str) -> dict:
    return next(c for r in doc["runs"] for c in r["checkpoints"] if os.path.basename(c["path"]) == name)


def _latest(path: Path, *flags: str) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "ckptwatch", "latest", os.fsencode(str(path)), "--settle", "0", *flags]
    return subprocess.run(argv, capture_output=True, timeout=HANG_LIMIT, cwd=REPO)


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _first_shard(ckpt: Path) -> Path:
    return sorted(p for p in ckpt.iterdir() if p.name.startswith("model-0"))[0]


# --- hangs: a FIFO where a file is expected ------------------------------------------------------------

def _index_fifo(run: Path, outside: Path) -> tuple[str, str]:
    _replace_with_fifo(run / "checkpoint-6" / "model.safetensors.index.json")
    return "checkpoint-6", "model.safetensors.index.json"


def _shard_fifo(run: Path, outside: Path) -> tuple[str, str]:
    shard = _first_shard(run / "checkpoint-6")
    _replace_with_fifo(shard)
    return "checkpoint-6", shard.name


def _dcp_metadata_fifo(run: Path, outside: Path) -> tuple[str, str]:
    _replace_with_fifo(run / "step_300" / ".metadata")
    return "step_300", ".metadata"


def _deepspeed_state_fifo(run: Path, outside: Path) -> tuple[str, str]:
    _replace_with_fifo(run / "global_step4" / "mp_rank_00_model_states.pt")
    return "global_step4", "mp_rank_00_model_states.pt"


def _shard_linked_to_outside_fifo(run: Path, outside: Path) -> tuple[str, str]:
    os.mkfifo(outside / "fifo")
    shard = _first_shard(run / "checkpoint-6")
    shard.unlink()
    shard.symlink_to(outside / "fifo")
    return "checkpoint-6", shard.name


HANGS = [
    ("hf_sharded", _index_fifo, "not_regular_file", "checkpoint-4"),
    ("hf_sharded", _shard_fifo, "not_regular_file", "checkpoint-4"),
    ("dcp", _dcp_metadata_fifo, "not_regular_file", "step_200"),
    ("deepspeed_zero2", _deepspeed_state_fifo, "not_regular_file", "global_step2"),
    ("hf_sharded", _shard_linked_to_outside_fifo, "unsafe_path", "checkpoint-4"),
]


@pytest.mark.parametrize(("build", "make", "kind", "previous"), HANGS, ids=[h[1].__name__[1:] for h in HANGS])
def test_fifo_where_a_file_belongs_is_a_finding_not_a_hang(artefact, tmp_path: Path, build, make, kind,
                                                          previous) -> None:
    run = artefact(build)
    outside = tmp_path / "outside"
    outside.mkdir()
    ckpt, name = make(run, outside)
    code, doc = _once(run)
    v = _checkpoint(doc, ckpt)
    assert code == 1 and v["status"] == "incomplete"
    assert any(p["kind"] == kind and p["file"].endswith(name) and "was not read" in p["message"]
               for p in v["problems"]), v["problems"]
    latest = _latest(run)
    assert latest.returncode == 0 and latest.stdout == os.fsencode(str(run / previous)) + b"\n"
    p = run_cli("verify", str(run / ckpt), "--settle", "0", timeout=HANG_LIMIT)
    assert p.returncode == 1 and kind in p.stdout


# --- exit 3 and wrong verdicts: loops, directories, FIFOs and links out of the run ----------------------

def _judge(run: Path):
    from ckptwatch.engine import check_root

    report = check_root(str(run), CheckOptions(settle_seconds=0), 2e9)
    return verdicts_by_name(report.runs[0]), report


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "training_args.bin",
                                  "trainer_state.json"])
@pytest.mark.parametrize("shape", ["directory", "fifo", "symlink loop"])
def test_non_regular_file_where_a_checkpoint_file_belongs(artefact, name: str, shape: str) -> None:
    """A directory, FIFO or symlink loop named like a checkpoint file: not complete, and not `latest`."""
    run = artefact("hf_full")
    target = run / "checkpoint-6" / name
    target.unlink()
    if shape == "directory":
        target.mkdir()
    elif shape == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(name)
    verdicts, report = _judge(run)
    v = verdicts["checkpoint-6"]
    assert v.status.value == "incomplete", v.problems
    problem = next(p for p in v.problems if p.kind == "not_regular_file")
    what = {"directory": "a directory", "fifo": "a FIFO", "symlink loop": "a symlink loop"}[shape]
    assert problem.file == str(target) and what in problem.message
    assert report.runs[0].latest_resumable == str(run / "checkpoint-4")


def test_trainer_state_linked_out_of_the_run_is_unsafe_and_not_read(artefact, tmp_path: Path) -> None:
    run = artefact("hf_full")
    state = run / "checkpoint-6" / "trainer_state.json"
    victim = tmp_path / "elsewhere.json"
    victim.write_text('{"global_step": 999}')  # read, it would be a step_mismatch
    state.unlink()
    state.symlink_to(victim)
    v = _judge(run)[0]["checkpoint-6"]
    assert kinds_of(v) - {"needs_weights_only_false"} == {"unsafe_path"} and v.status.value == "incomplete"
    (unsafe,) = [p for p in v.problems if p.kind == "unsafe_path"]
    assert str(victim) in unsafe.message and "was not read" in unsafe.message


def test_shard_linked_out_of_the_run_is_unsafe_and_not_read(artefact, tmp_path: Path) -> None:
    """The shard's own problems (a truncated copy) must not be reported: it is never opened."""
    run = artefact("hf_sharded")
    shard = _first_shard(run / "checkpoint-6")
    copy = tmp_path / "shard.safetensors"
    shutil.copy(shard, copy)
    os.truncate(copy, 100)
    shard.unlink()
    shard.symlink_to(copy)
    v = _judge(run)[0]["checkpoint-6"]
    assert v.status.value == "incomplete"
    assert "unsafe_path" in kinds_of(v) and "truncated" not in kinds_of(v)


def test_dangling_weights_symlink_is_incomplete_once_settled(artefact) -> None:
    run = artefact("hf_full")
    weights = run / "checkpoint-6" / "model.safetensors"
    weights.unlink()
    weights.symlink_to("model-gone.safetensors")
    v = _judge(run)[0]["checkpoint-6"]
    assert v.status.value == "incomplete" and "dangling_symlink" in kinds_of(v)


@pytest.mark.parametrize("shape", ["many levels", "longer than PATH_MAX"])
def test_deeply_nested_directory_is_a_warning_not_corruption(artefact, shape: str) -> None:
    run = artefact("hf_full")
    where = run / "checkpoint-6"
    if shape == "many levels":
        (where / os.path.join(*["d"] * 40)).mkdir(parents=True)
    else:
        fd = os.open(where, os.O_RDONLY)
        try:  # mkdir relative to each new dir: the full path passes PATH_MAX (4096) on the way
            for _ in range(24):
                os.mkdir("n" * 200, dir_fd=fd)
                new = os.open("n" * 200, os.O_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = new
        finally:
            os.close(fd)
    v = _judge(run)[0]["checkpoint-6"]
    assert v.status.value == "complete" and "too_deep" in kinds_of(v), v.problems


# --- latest: what a shell script gets back is the checkpoint judged ------------------------------------

def test_trailing_newline_is_not_a_trainer_checkpoint_name(artefact) -> None:
    """A complete `checkpoint-6<newline>` beside a corrupt `checkpoint-6`: `^checkpoint-(\\d+)$` matched
    before the newline, so it was step 6 and `$(ckptwatch latest RUN)` (which strips the newline) gave the
    corrupt one. Now it is no Trainer checkpoint: the run's step 6 is the corrupt dir, the run resumes
    from checkpoint-2, and the newline dir is what any unknown dir is, a run of loose files found
    inside it (the generic layout: no step, never this run's checkpoint)."""
    from ckptwatch.engine import check_root

    run = artefact("hf_full")
    (run / "checkpoint-6").rename(run / "checkpoint-6\n")
    (run / "checkpoint-4").rename(run / "checkpoint-6")  # global_step 4 in a dir named 6: corrupt
    report = check_root(str(run), CheckOptions(settle_seconds=0), 2e9)
    trainer, loose = report.runs
    assert trainer.root == str(run) and trainer.layout == "hf-trainer"
    assert [(os.path.basename(v.path), v.step) for v in trainer.checkpoints] == [("checkpoint-2", 2),
                                                                                 ("checkpoint-6", 6)]
    assert trainer.checkpoints[1].status.value == "corrupt"
    assert trainer.newest_resumable is trainer.checkpoints[0]
    assert loose.root == str(run / "checkpoint-6\n") and loose.layout == "generic"
    assert {v.step for v in loose.checkpoints} == {None}
    assert all(os.path.dirname(v.path) == loose.root for v in loose.checkpoints)


def test_newline_in_a_path_is_refused_bare_and_carried_by_print0_and_json(artefact, tmp_path: Path) -> None:
    """A run dir named `run<newline>b`: a shell's `read` or `for` would split the path, so the bare form
    refuses (exit 1); --print0 and --json carry the exact path."""
    run = artefact("hf_full").rename(tmp_path / "run\nb")
    chosen = os.fsencode(str(run / "checkpoint-6"))
    bare = _latest(run)
    assert bare.returncode == 1 and bare.stdout == b""
    assert b"control character" in bare.stderr and b"--print0" in bare.stderr
    shell = subprocess.run(["bash", "-c", 'ckpt=$("$@") && printf %s "$ckpt"', "x", sys.executable, "-m",
                            "ckptwatch", "latest", str(run), "--settle", "0"],
                           capture_output=True, timeout=HANG_LIMIT, cwd=REPO)
    assert shell.returncode == 1 and shell.stdout == b""
    nul = _latest(run, "--print0")
    assert nul.returncode == 0 and nul.stdout == chosen + b"\0"
    doc = json.loads(_latest(run, "--json").stdout)
    assert doc["path"] == str(run / "checkpoint-6") and base64.b64decode(doc["path_b64"]) == chosen


def test_non_utf8_run_name_prints_the_path_that_exists(artefact, tmp_path: Path) -> None:
    built = artefact("hf_full")
    run = tmp_path / os.fsdecode(b"run-\xff")
    built.rename(run)
    out = _latest(run)
    assert out.returncode == 0
    printed = out.stdout.rstrip(b"\n")
    assert printed == os.fsencode(str(run / "checkpoint-6")) and os.path.isdir(printed)
    doc = json.loads(_latest(run, "--json").stdout)
    assert base64.b64decode(doc["path_b64"]) == printed


def test_shellpath_refuses_a_name_it_cannot_map_back(tmp_path: Path) -> None:
    """`a\\xff` as four characters and the byte 0xff display alike: with both on disk, neither is guessed."""
    from ckptwatch.formats._io import display
    from ckptwatch.shellpath import for_shell

    (tmp_path / "a\\xff").mkdir()
    shown = display(str(tmp_path / "a\\xff"))
    assert for_shell(shown).raw == os.fsencode(str(tmp_path / "a\\xff"))
    os.mkdir(os.fsencode(str(tmp_path)) + b"/a\xff")
    assert for_shell(shown).raw is None and for_shell(shown).refusal


def test_for_terminal_escapes_what_would_rewrite_a_note() -> None:
    """Newlines, escape sequences and bidi overrides in a shown path are escaped; other text stays."""
    from ckptwatch.shellpath import for_terminal

    assert for_terminal("/runs/checkpoint-30\n") == "/runs/checkpoint-30\\n"
    assert for_terminal("/r/\x1b[2Jx\ty\r") == "/r/\\x1b[2Jx\\ty\\r"
    assert for_terminal("/r/\u202egnp.exe\u2028\x85") == "/r/\\u202egnp.exe\\u2028\\x85"
    assert for_terminal("/r/caf\u00e9 run/\\xff") == "/r/caf\u00e9 run/\\xff"  # display's \\xNN text


def test_once_table_keeps_a_newline_in_a_run_name_on_its_line(artefact, tmp_path: Path) -> None:
    """The table of `once` (the run, its checkpoints, each finding naming a file) escapes the newline of
    a run dir named `run<newline>b`: no line starts with the `b/...` a raw newline would break off."""
    run = artefact("hf_full").rename(tmp_path / "run\nb")
    out = run_cli("once", str(run), "--no-loss", "--settle", "0", timeout=HANG_LIMIT)
    assert out.returncode in (0, 1), out.stderr
    lines = out.stdout.splitlines()
    shown = f"{tmp_path}/run\\nb"
    assert f"{shown}  [hf-trainer]  3 checkpoints" in lines
    assert f"  newest resumable: {shown}/checkpoint-6" in lines
    assert any(f"{shown}/checkpoint-6/training_args.bin" in line for line in lines)  # a finding's message
    assert not [line for line in lines if line.startswith("b/") or line.startswith("b  [")], lines


def test_once_json_carries_the_exact_bytes_of_every_checkpoint_and_run(artefact, tmp_path: Path) -> None:
    """`once --json` shows paths as text (a byte that is not UTF-8 as the four characters \\xNN); each
    checkpoint's path_b64 and each run's root_b64 give back the exact bytes, a newline included."""
    root = two_trainer_runs(artefact, tmp_path)
    raw_root = os.fsencode(str(root))
    os.rename(raw_root + b"/run-a", raw_root + b"/run-\xff")
    os.rename(raw_root + b"/run-b", raw_root + b"/run-\nb")
    _code, doc = _once(root)
    runs = {base64.b64decode(r["root_b64"]): r for r in doc["runs"]}
    assert set(runs) == {raw_root + b"/run-\xff", raw_root + b"/run-\nb"}
    shown = runs[raw_root + b"/run-\xff"]["root"]
    assert shown == str(root) + "/run-\\xff" and not os.path.exists(shown)  # the text is not the path
    for raw, run in runs.items():
        paths = [base64.b64decode(c["path_b64"]) for c in run["checkpoints"]]
        assert paths == [raw + b"/checkpoint-%d" % step for step in (2, 4, 6)]
        assert all(os.path.isfile(p + b"/trainer_state.json") for p in paths)


# --- the service -----------------------------------------------------------------------------------------

def test_one_bad_run_and_hostile_entries_do_not_blind_the_others(artefact, tmp_path: Path) -> None:
    root = two_trainer_runs(artefact, tmp_path)
    state = root / "run-a" / "checkpoint-6" / "trainer_state.json"
    state.unlink()
    state.mkdir()
    os.mkfifo(root / "dropped-fifo")
    (root / "loop").symlink_to("loop")
    (root / "run-b" / "checkpoint-2" / "loop.bin").symlink_to("loop.bin")
    d = make_daemon(tmp_path / "state", root)
    try:
        d.judge_watch(d.config.watches[0])
        runs = {os.path.basename(r["run"]): r for r in d.state.runs()}
        assert set(runs) == {"run-a", "run-b"}
        assert runs["run-a"]["newest_resumable"]["path"].endswith("run-a/checkpoint-4")
        assert runs["run-b"]["newest_resumable"]["path"].endswith("run-b/checkpoint-6")
        bad = {c["checkpoint"]: c for r in runs.values() for c in r["open"]}
        kinds = {p["kind"] for p in bad[str(state.parent)]["problems"]}
        assert kinds - {"needs_weights_only_false"} == {"not_regular_file"}
    finally:
        d.close()


def test_a_fault_in_one_checkpoint_is_its_finding(artefact, monkeypatch) -> None:
    """A bug of ours on one checkpoint (here: a layout that raises) makes that checkpoint check_failed."""
    from ckptwatch.layouts.hf_trainer import HfTrainer

    run = artefact("hf_full")
    real = HfTrainer.judge

    def judge(self, cand, opts):
        if cand.path.endswith("checkpoint-6"):
            raise KeyError("boom")
        return real(self, cand, opts)

    monkeypatch.setattr(HfTrainer, "judge", judge)
    monkeypatch.delenv("CKPTWATCH_DEBUG", raising=False)
    verdicts, report = _judge(run)
    assert kinds_of(verdicts["checkpoint-6"]) == {"check_failed"}
    assert "KeyError" in verdicts["checkpoint-6"].problems[0].message
    assert report.runs[0].latest_resumable == str(run / "checkpoint-4")


def test_resume_pointer_never_writes_through_a_planted_symlink(artefact, tmp_path: Path) -> None:
    """Links planted at the old temp names and at the final names point at a victim outside the root: the
    victim stays untouched, and the pointer is written as our own files."""
    from ckptwatch import pointer

    run = artefact("hf_full")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    for name in (f"ckptwatch-latest.json.tmp-{os.getpid()}", "ckptwatch-latest.json",
                 f"ckptwatch-latest.tmp-{os.getpid()}"):
        (run / name).symlink_to(victim)
    (run / "ckptwatch-latest").symlink_to(victim_dir)
    assert pointer.current(str(run)) is None  # the planted link is not read either
    pointer.update(str(run), str(run / "checkpoint-6"), 6, "hf-trainer", 1.0)
    assert victim.read_text() == "precious\n" and list(victim_dir.iterdir()) == []
    doc = run / "ckptwatch-latest.json"
    assert not doc.is_symlink() and json.loads(doc.read_text())["path"] == str(run / "checkpoint-6")
    assert os.readlink(run / "ckptwatch-latest") == "checkpoint-6"
    assert pointer.current(str(run)) == str(run / "checkpoint-6")
    leftovers = [p.name for p in run.iterdir() if ".tmp-" in p.name]
    assert sorted(leftovers) == sorted([f"ckptwatch-latest.json.tmp-{os.getpid()}",
                                        f"ckptwatch-latest.tmp-{os.getpid()}"])  # planted, fresh: left


def test_reload_refuses_a_config_without_watches(artefact, tmp_path: Path) -> None:
    """SIGHUP with an empty config keeps the old one, as startup refuses it."""
    from ckptwatch.config import load_config
    from ckptwatch.daemon import Daemon
    from ckptwatch.notify import Notifier

    root = two_trainer_runs(artefact, tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[service]\nstate_dir = "{tmp_path / "state"}"\nlog_format = "json"\nsettle_seconds = 0\n'
                   f'[[watch]]\npath = "{root}"\n')
    d = Daemon(str(cfg), load_config(str(cfg)), notifier=Notifier(None))
    try:
        cfg.write_text(f'[service]\nstate_dir = "{tmp_path / "state"}"\nlog_format = "json"\n')
        d._reload()
        assert [w.path for w in d.config.watches] == [str(root)]
    finally:
        d.close()
    p = run_cli("run", "--config", str(cfg), timeout=HANG_LIMIT)
    assert p.returncode == 2 and "at least one [[watch]]" in p.stderr


def test_passes_racing_a_real_trainer_never_fail(tmp_path):
    """Issue 10 saw exit 3 in 1 pass of 75 while a real Trainer wrote (trainer_state.json read mid-write,
    files vanishing under the reader). Here whole-root passes run back to back, in-process, for as long as
    a real Trainer (``tests.builders.hf live``: 10 saves, a 1 s pause after each) keeps writing: every
    pass must return a report (no exception), and the last, once the writes settle, calls every
    checkpoint complete."""
    import time

    from ckptwatch.engine import check_root
    from tests.builders.hf import _child_env

    run = tmp_path / "run"
    trainer = subprocess.Popen([sys.executable, "-m", "tests.builders.hf", "live", str(run)], cwd=REPO,
                               env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    passes = 0
    try:
        deadline = time.monotonic() + 150
        while trainer.poll() is None and time.monotonic() < deadline:
            if run.exists():
                check_root(str(run), CheckOptions(settle_seconds=0), time.time())  # must not raise
                passes += 1
        assert trainer.wait(timeout=10) == 0, trainer.stderr.read().decode(errors="replace")[-3000:]
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait()
    assert passes >= 75, f"only {passes} passes raced the trainer"
    (report,) = check_root(str(run), CheckOptions(settle_seconds=0), time.time()).runs
    assert {v.status.value for v in report.checkpoints} == {"complete"} and len(report.checkpoints) == 10
