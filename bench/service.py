"""Benchmark 4: the service (``ckptwatch run``): verdict latency, idle cost, a burst of checkpoints.

Driven by ``python -m bench.run --only service`` (see bench/README.md, section 4). Every phase starts a
real ``python -m ckptwatch run --config FILE`` child with JSON logs on a pipe, read line by line by a
thread that stamps each line with ``time.time()`` on arrival, and a unix datagram socket of our own as
``NOTIFY_SOCKET`` (READY=1, STATUS=...). Checkpoints are written by a child process
(``bench.ckpt_writer``: real Trainer checkpoints of 10 files, the weights by ``safetensors.numpy``), so
this process imports neither numpy nor torch.

Phases (each one its own service, state dir and root):
  latency-inotify  N checkpoints one after another; verdict arrival - last write - settle_seconds.
                   Yardstick: ``inotifywait -m -r -e close_write`` on the same writes.
  latency-polling  the same with observer = "polling", each write at a random phase of the poll.
  idle             a tree of 100 runs x 100 checkpoints x 10 files; time to READY=1, then CPU and RSS of
                   an idle period, torch/numpy not mapped; then two new checkpoints in two runs, each
                   timing the per-run pass it triggers (an event inside a known run makes only that run
                   due), its verdict latency and the RSS after it; then two whole-root passes, each
                   triggered by a new empty directory directly under the root (no known run holds it, so
                   the whole root is judged, as after an inotify overflow and every rescan_seconds): CPU,
                   wall time and RSS after. Long-run idle cost = idle CPU + whole-root pass CPU /
                   rescan_seconds, at 300 s, 600 s (the default) and 900 s.
                   Yardsticks: ``inotifywait -m -r`` on the same tree, over the same idle period;
                   ``find -type f -printf`` over the tree for the cost of visiting every file.
  burst            K checkpoints written as fast as possible; time until K ``complete`` verdicts, peak
                   RSS, and the exact count (no drops, no duplicates).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import OLD, PY, REPO, child_env, hf_template, loadavg, log, measure

SETTLE = 2.0
RESCAN = 600.0  # the service's default rescan_seconds
PASS_WAIT = 30.0  # idle phase: how long to wait for the verdict of a checkpoint written into the big tree
STATUS_SKEW = 0.5  # s: a STATUS= may be stamped before the log line the service wrote just before it


# --------------------------------------------------------------------------------------------------
# Children: the service, the checkpoint writer, inotifywait


class Service:
    """A ``ckptwatch run`` child with its JSON-lines log and sd_notify messages, stamped on arrival."""

    def __init__(self, base: Path, root: Path, observer: str, settle: float = SETTLE,
                 rescan: float = RESCAN, metrics_port: int = 0) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base, self.root, self.settle = base, root, settle
        self.metrics_port = metrics_port
        cfg = base / "config.toml"
        cfg.write_text(f'[service]\nsettle_seconds = {settle}\nstate_dir = "{base / "state"}"\n'
                       f'log_format = "json"\nrescan_seconds = {rescan}\nmetrics_port = {metrics_port}\n\n'
                       f'[[watch]]\npath = "{root}"\nobserver = "{observer}"\n')
        sock_path = base / "notify.sock"
        if sock_path.exists():
            sock_path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(sock_path))
        self.sock.settimeout(0.2)
        self.cond = threading.Condition()
        self.events: list[tuple[float, dict]] = []  # (arrival time.time(), parsed JSON line)
        self.notes: list[tuple[float, str]] = []  # (arrival, "READY=1" / "STATUS=..." ...)
        env = child_env()
        env["NOTIFY_SOCKET"] = str(sock_path)
        for k in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(k, None)
        self.stderr_path = base / "stderr.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - open for the child's lifetime
        self.started = time.time()
        self.proc = subprocess.Popen([PY, "-m", "ckptwatch", "run", "--config", str(cfg)], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)
        self.pid = self.proc.pid
        self._threads = [threading.Thread(target=self._read_log, daemon=True),
                         threading.Thread(target=self._read_notify, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_log(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.time()
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                ev = {"event": "unparsed", "line": line[:500]}
            with self.cond:
                self.events.append((now, ev))
                self.cond.notify_all()

    def _read_notify(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if self.proc.poll() is not None:
                    return
                continue
            except OSError:
                return
            now = time.time()
            with self.cond:
                self.notes.extend((now, m) for m in data.decode("utf-8", "replace").split("\n"))
                self.cond.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Block until ``predicate()`` (called under the lock) is truthy; raise on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = predicate()
                if found:
                    return found
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited {self.proc.returncode} waiting for {what}: "
                                       f"{self.stderr_path.read_text(errors='replace')[-1500:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                self.cond.wait(min(left, 0.5))

    def wait_ready(self, timeout: float) -> float:
        return self.wait(lambda: next((t for t, m in self.notes if m == "READY=1"), None), timeout, "READY=1")

    def judged(self, path: str | None = None, status: str | None = None) -> list[tuple[float, dict]]:
        with self.cond:
            return [(t, e) for t, e in self.events if e.get("event") == "checkpoint_judged"
                    and (path is None or e.get("checkpoint") == path)
                    and (status is None or e.get("status") == status)]

    def cpu(self) -> float:
        """User + system CPU seconds of the service so far (all threads), from /proc/PID/stat."""
        return proc_cpu(self.pid)

    def overflow_lines(self) -> int:
        """watchdog's "Inotify queue overflowed" warnings on the service's stderr so far."""
        self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().count(b"queue overflowed")

    def stop(self) -> dict:
        out: dict = {}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                out["killed"] = True
        out["exit_code"] = self.proc.returncode
        for t in self._threads:
            t.join(timeout=2)
        self.sock.close()
        self._stderr.close()
        err = self.stderr_path.read_text(errors="replace")
        out["stderr_lines"] = len(err.splitlines())
        out["stderr_overflow_lines"] = sum("overflow" in ln.lower() for ln in err.splitlines())
        out["stderr_tail"] = err[-1500:]
        with self.cond:
            kinds: dict[str, int] = {}
            for _, e in self.events:
                kinds[e.get("event", "?")] = kinds.get(e.get("event", "?"), 0) + 1
        out["log_events"] = kinds
        return out


class CkptWriter:
    """The ``bench.ckpt_writer`` child: one JSON command in, one JSON answer out."""

    def __init__(self, template: Path) -> None:
        self.proc = subprocess.Popen([PY, "-m", "bench.ckpt_writer", str(template)], cwd=REPO,
                                     env=child_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        first = self._read()
        if not first.get("ready"):
            raise RuntimeError(f"checkpoint writer did not start: {first}")

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"checkpoint writer exited ({self.proc.wait()})")
        return json.loads(line)

    def call(self, **cmd: object) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"checkpoint writer: {out['error']}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call_quit()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired, RuntimeError):
                self.proc.kill()
                self.proc.wait()

    def call_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.flush()


class InotifyWait:
    """``inotifywait -m -r`` on a tree: the yardstick. Event lines (``%w%f``) are stamped on arrival."""

    def __init__(self, root: Path, events: tuple[str, ...] = ("close_write",),
                 keep_lines: bool = True) -> None:
        argv = ["inotifywait", "-m", "-r", "--format", "%w%f"]
        for e in events:
            argv += ["-e", e]
        self.keep_lines = keep_lines
        self.started = time.time()
        self.proc = subprocess.Popen([*argv, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.pid = self.proc.pid
        self.lines: dict[str, float] = {}  # path -> first arrival
        self.count = 0
        self.lock = threading.Lock()
        assert self.proc.stderr is not None
        self.established = None
        for line in self.proc.stderr:  # "Setting up watches..." then "Watches established."
            if "Watches established" in line:
                self.established = time.time()
                break
            if "Failed" in line or "upper limit" in line:
                raise RuntimeError(f"inotifywait: {line.strip()}")
        if self.established is None:
            raise RuntimeError(f"inotifywait exited ({self.proc.wait()}) before establishing its watches")
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.time()
            path = line.rstrip("\n")
            with self.lock:
                self.count += 1
                if self.keep_lines:
                    self.lines.setdefault(path, now)

    def arrival(self, path: str) -> float | None:
        with self.lock:
            return self.lines.get(path)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------------------
# /proc helpers


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds. Resolution: 1 / CLK_TCK (10 ms)."""
    return proc_cpu_path(f"/proc/{pid}/stat")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread ("main" is the thread whose id is the pid), from /proc/PID/task/*/stat."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out["main" if tid == str(pid) else tid] = proc_cpu_path(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            pass
    return out


def proc_cpu_path(path: str) -> float:
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict:
    """VmRSS, VmHWM (peak RSS) in KiB and the thread count, from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0])
        elif key == "Threads":
            out[key] = int(val)
    return out


def mapped_libs(pid: int) -> dict:
    """Is torch (libtorch*.so, torch/_C) or numpy (_multiarray_umath) mapped into the process?"""
    maps = Path(f"/proc/{pid}/maps").read_text()
    paths = {ln.split()[-1] for ln in maps.splitlines() if len(ln.split()) >= 6}
    return {"torch": sorted(p for p in paths if "torch" in p)[:5],
            "numpy": sorted(p for p in paths if "numpy" in p)[:5],
            "mapped_files": len(paths)}


def inotify_watches(pid: int) -> int:
    """Number of inotify watches the process holds (``inotify wd:`` lines of its fdinfo)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            n += sum(1 for ln in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                     if ln.startswith("inotify wd:"))
        except OSError:
            pass
    return n


class RssSampler:
    """Polls the RSS of a pid every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak_kib, self.samples = pid, interval, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, proc_status(self.pid).get("VmRSS", 0))
                self.samples += 1
            except OSError:
                return
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._t.join(timeout=2)
        return self.peak_kib


# --------------------------------------------------------------------------------------------------
# Statistics


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p95 of 20 samples is the 19th smallest)."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": statistics.median(values), "p95": pct(values, 95), "min": min(values),
            "max": max(values), "all": [round(v, 4) for v in values]}


# --------------------------------------------------------------------------------------------------
# Data


def make_template(work: Path, writer: CkptWriter) -> Path:
    """One 10-file checkpoint written by the writer, dated an hour back: the tree's hard-link source."""
    d = work / "template" / "checkpoint-1"
    shutil.rmtree(d.parent, ignore_errors=True)
    writer.call(op="ckpt", dir=str(d), step=1)
    stamp = time.time() - OLD
    for name in os.listdir(d):
        os.utime(d / name, (stamp, stamp))
    return d


def build_tree(template: Path, root: Path, runs: int, per_run: int) -> dict:
    """``root/run_XXX/checkpoint-1..per_run``: 9 hard links to the template and a ``trainer_state.json``
    of its own (``global_step`` = the directory's step) per checkpoint; every mtime an hour back."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    stamp = time.time() - OLD
    names = sorted(n for n in os.listdir(template) if n != "trainer_state.json")
    state = json.loads((template / "trainer_state.json").read_text())
    files = 0
    for r in range(runs):
        run = root / f"run_{r:03d}"
        run.mkdir()
        for step in range(1, per_run + 1):
            d = run / f"checkpoint-{step}"
            d.mkdir()
            for name in names:
                os.link(template / name, d / name)
            state["global_step"] = step
            p = d / "trainer_state.json"
            p.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
            os.utime(p, (stamp, stamp))
            os.utime(d, (stamp, stamp))
            files += len(names) + 1
        os.utime(run, (stamp, stamp))
    os.utime(root, (stamp, stamp))
    return {"runs": runs, "checkpoints_per_run": per_run, "checkpoints": runs * per_run, "files": files,
            "dirs": 1 + runs + runs * per_run}


LINKS_PER_TEMPLATE = 60_000  # ext4 allows 65,000 hard links to one inode


def build_big_tree(template: Path, root: Path, runs: int, per_run: int) -> dict:
    """``build_tree``'s tree past the hard-link limit: a fresh copy of the template every
    ``LINKS_PER_TEMPLATE // per_run`` runs, the same files otherwise."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    chunk = LINKS_PER_TEMPLATE // per_run
    files = dirs = 0
    for start in range(0, runs, chunk):
        src = root.parent / f"template-{start}"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(template, src)
        part = root.parent / f"part-{start}"
        shape = build_tree(src, part, min(chunk, runs - start), per_run)
        for i, run in enumerate(sorted(part.iterdir())):
            os.rename(run, root / f"run_{start + i:05d}")
        part.rmdir()
        files += shape["files"]
        dirs += shape["dirs"] - 1
    stamp = time.time() - 3600
    os.utime(root, (stamp, stamp))
    return {"runs": runs, "checkpoints_per_run": per_run, "checkpoints": runs * per_run, "files": files,
            "dirs": dirs + 1}


AGED = 3 * 86400.0  # a finished run of a realistic tree was last written this long ago


def age_runs(root: Path, run_names: list[str], active: int) -> list[str]:
    """Date every run dir of ``root`` but ``active`` of them (every len/active-th), and its checkpoint
    dirs, ``AGED`` back: what a directory poller sees of a run finished days ago. The files keep their
    hour-old mtimes: the template's are hard links (one inode for every run), and a ``trainer_state.json``
    older than its weights is the Trainer's sign of a save in progress. Returns the active runs' names."""
    step = max(1, len(run_names) // max(1, active))
    keep = set(run_names[::step][:active])
    stamp = time.time() - AGED
    for name in run_names:
        if name in keep:
            continue
        run = root / name
        for ckpt in os.scandir(run):
            if ckpt.is_dir(follow_symlinks=False):
                os.utime(ckpt.path, (stamp, stamp), follow_symlinks=False)
        os.utime(run, (stamp, stamp), follow_symlinks=False)
    return [n for n in run_names if n in keep]


# --------------------------------------------------------------------------------------------------
# Phases


def phase_latency(work: Path, writer: CkptWriter, observer: str, samples: int, poll_interval: float,
                  res: dict) -> dict:
    base = work / f"latency-{observer}"
    shutil.rmtree(base, ignore_errors=True)
    root = base / "root"
    run = root / "run"
    run.mkdir(parents=True)
    res.update({"observer": observer, "settle_seconds": SETTLE, "samples": samples,
                "loadavg_before": loadavg()})
    svc = Service(base / "svc", root, observer)
    iw = None
    try:
        res["ready_s"] = svc.wait_ready(60) - svc.started
        iw = InotifyWait(root, ("close_write",))
        rows = []
        for i in range(1, samples + 1):
            # a random phase against the poll: otherwise every sample has the same one
            if observer == "polling":
                time.sleep(random.uniform(0, poll_interval))
            else:
                time.sleep(random.uniform(0.1, 0.4))
            d = str(run / f"checkpoint-{i}")
            w = writer.call(op="ckpt", dir=d, step=i)
            timeout = SETTLE + (poll_interval if observer == "polling" else 0) + 30
            t_arr, ev = svc.wait(lambda d=d: next(((t, e) for t, e in svc.events
                                                   if e.get("event") == "checkpoint_judged"
                                                   and e.get("checkpoint") == d
                                                   and e.get("status") == "complete"),
                                                  None), timeout, f"complete verdict of {d}")
            logged = _iso(ev.get("timestamp"))
            marker = iw.arrival(str(Path(d) / "trainer_state.json"))
            others = [e.get("status") for _, e in svc.judged(d) if e.get("status") != "complete"]
            rows.append({"checkpoint": d, "last_write": w["last_write"],
                         "write_s": w["last_write"] - w["first_write"],
                         "arrival_over_settle": t_arr - w["last_write"] - SETTLE,
                         "logged_over_settle": (logged - w["last_write"] - SETTLE) if logged else None,
                         "inotifywait_s": (marker - w["last_write"]) if marker else None,
                         "other_verdicts_first": others})
        res["rows"] = rows
        res["ours"] = summary([r["arrival_over_settle"] for r in rows])
        res["ours_logged_ts"] = summary([r["logged_over_settle"] for r in rows
                                         if r["logged_over_settle"] is not None])
        res["inotifywait"] = summary([r["inotifywait_s"] for r in rows if r["inotifywait_s"] is not None])
        res["write_s"] = summary([r["write_s"] for r in rows])
        res["non_complete_verdicts"] = sum(len(r["other_verdicts_first"]) for r in rows)
    finally:
        if iw:
            iw.stop()
        res["service"] = svc.stop()
        res["loadavg_after"] = loadavg()
    budget = SETTLE + (poll_interval if observer == "polling" else 0.0) + 1.0
    res["target_s_over_settle"] = budget - SETTLE
    res["valid"] = res["ours"].get("n") == samples and res["service"]["exit_code"] == 0
    return res


def _iso(ts: str | None) -> float | None:
    if not ts:
        return None
    import datetime as _dt

    return _dt.datetime.fromisoformat(ts).timestamp()  # "...Z": UTC (Python 3.11+)


def poll_calls(port: int) -> float:
    """stat + listdir calls the service's pollers made so far (its metrics endpoint), 0 without one."""
    import urllib.request

    if not port:
        return 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("ckptwatch_poll_stats_total", "ckptwatch_poll_listdirs_total")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phase_idle(work: Path, writer: CkptWriter, template: Path, runs: int, idle_s: float, res: dict,
               observer: str = "auto", passes: int = 2, poll_interval: float = 5.0,
               per_run: int = 100, active_runs: int | None = None) -> dict:
    """``observer = "polling"``: the same tree under the checkpoint-aware poller (issue 13), with the
    stat + listdir calls it made in the idle period from its metrics, and each per-run pass's write at a
    random phase of the poll. ``passes`` new checkpoints, in runs spread over the tree.

    ``active_runs``: a cluster where most runs finished (``age_runs``); the passes then go into the
    active runs, spread over them (a new checkpoint in a run finished days ago is the poller's documented
    exception: seen within 12 poll intervals)."""
    base = work / ("idle" if observer == "auto" else f"idle-{observer}")
    shutil.rmtree(base, ignore_errors=True)
    root = base / "root"
    t = time.perf_counter()
    if runs * per_run > LINKS_PER_TEMPLATE:  # past ext4's 65,000 links per inode: a template copy per chunk
        res["tree"] = build_big_tree(template, root, runs, per_run)
    else:
        res["tree"] = build_tree(template, root, runs, per_run)
    run_names = sorted(os.listdir(root))
    if active_runs is not None:
        run_names = age_runs(root, run_names, active_runs)
        res["tree"]["active_runs"] = len(run_names)
    res["tree"]["build_s"] = round(time.perf_counter() - t, 1)
    n = res["tree"]["checkpoints"]
    log(f"service idle: {res['tree']['files']:,} files in {res['tree']['dirs']:,} dirs built in "
        f"{res['tree']['build_s']} s" + (f"; {res['tree']['active_runs']:,} runs active, the others dated "
                                         f"{AGED / 86400:.0f} days back" if active_runs is not None else ""))
    res["find"] = {k: v
                   for k, v in measure(["find", str(root), "-type", "f", "-printf", "%s %T@\n"], 3).items()
                   if k != "all"}
    res["loadavg_before"] = loadavg()
    svc = Service(base / "svc", root, observer, metrics_port=_free_port() if observer == "polling" else 0)
    res["observer"] = observer
    iw = None
    try:
        ready = svc.wait_ready(300 + 0.01 * res["tree"]["files"])  # the catch-up judges every checkpoint
        res["catchup_s"] = ready - svc.started
        res["catchup_cpu_s"] = svc.cpu()
        res["catchup_complete"] = len(svc.judged(status="complete"))
        log(f"service idle: READY=1 after {res['catchup_s']:.1f} s ({res['catchup_cpu_s']:.1f} s CPU), "
            f"{res['catchup_complete']:,} complete verdicts")
        res["service_inotify_watches"] = inotify_watches(svc.pid)
        res["after_ready"] = proc_status(svc.pid)
        t0 = time.time()
        iw = InotifyWait(root, ("close_write", "create", "delete", "moved_to", "moved_from", "modify"),
                         keep_lines=False)
        res["inotifywait_setup_s"] = iw.established - t0
        res["inotifywait_watches"] = inotify_watches(iw.pid)
        time.sleep(3.0)  # both settle (the service's watchdog thread drains what the catch-up scan caused)
        # The poll counts are scraped outside the CPU window: one /metrics scrape renders every run's
        # gauges (0.7 s of CPU at 10,000 runs), the scraper's cost, reported on its own below.
        calls0 = poll_calls(svc.metrics_port)
        c0, y0, th0 = svc.cpu(), proc_cpu(iw.pid), thread_cpu(svc.pid)
        t_calls0 = time.perf_counter()
        events0, ovf0 = len(svc.events), svc.overflow_lines()
        t0 = time.perf_counter()
        watches = [inotify_watches(svc.pid)]  # a recursive watch holds one per directory; sampled each 5 s
        while time.perf_counter() - t0 < idle_s - 0.01:
            time.sleep(min(5.0, idle_s - (time.perf_counter() - t0)))
            watches.append(inotify_watches(svc.pid))
        wall = time.perf_counter() - t0
        c1, y1, th1 = svc.cpu(), proc_cpu(iw.pid), thread_cpu(svc.pid)
        res["idle"] = {"wall_s": wall, "cpu_s": c1 - c0, "cpu_pct": 100 * (c1 - c0) / wall,
                       "status": proc_status(svc.pid), "log_lines": len(svc.events) - events0,
                       "watchdog_overflow_warnings": svc.overflow_lines() - ovf0,
                       "inotify_watches_sampled": watches,
                       "thread_cpu_s": {tid: round(th1[tid] - th0.get(tid, 0.0), 2) for tid in th1}}
        if svc.metrics_port:
            s0 = svc.cpu()
            calls = poll_calls(svc.metrics_port)
            since0 = time.perf_counter() - t_calls0
            res["idle"]["poll_calls_per_min"] = round(60 * (calls - calls0) / since0)
            res["idle"]["metrics_scrape_cpu_s"] = svc.cpu() - s0
            log(f"service idle: the poller made {res['idle']['poll_calls_per_min']:,} stat + listdir calls "
                f"per minute; a /metrics scrape cost {res['idle']['metrics_scrape_cpu_s']:.2f} s CPU (not in "
                "the idle CPU)")
        res["inotifywait_idle"] = {"cpu_s": y1 - y0, "cpu_pct": 100 * (y1 - y0) / wall,
                                   "status": proc_status(iw.pid)}
        res["mapped"] = mapped_libs(svc.pid)
        log(f"service idle: {wall:.0f} s idle: {res['idle']['cpu_pct']:.2f} % of a core, RSS "
            f"{res['idle']['status']['VmRSS'] / 1024:.0f} MiB, {res['idle']['watchdog_overflow_warnings']} "
            f"watchdog overflow warnings; inotifywait {res['inotifywait_idle']['cpu_pct']:.2f} %")
        iw.stop()
        iw = None
        # Per-run passes: a new checkpoint inside a known run makes only that run due (scope_of). Two, in
        # different runs, to see whether RSS keeps growing from pass to pass.
        # With the poller, each write lands at a random phase of its poll interval (as in latency_polling),
        # so the passes' latencies sample the polling bound at this tree's size.
        res["passes"] = []
        rng = random.Random(13)
        for k in range(passes):
            if observer == "polling":
                time.sleep(rng.uniform(0.0, poll_interval))
            run_name = run_names[(k * len(run_names)) // passes]
            p = one_pass(svc, writer, str(root / run_name / f"checkpoint-{per_run + 1}"), per_run + 1)
            res["passes"].append(p)
            if p.get("timed_out"):
                break
        lat = [p["verdict_over_settle_s"] for p in res["passes"]
               if p.get("verdict_over_settle_s") is not None]
        if lat:
            res["passes_latency"] = summary(lat)
        res["pass"] = res["passes"][0]
        # Whole-root passes: a new empty directory directly under the root is in no known run, so the
        # service judges the whole root: the pass an inotify overflow and every rescan_seconds also run.
        res["root_passes"] = []
        for k in (1, 2):
            rp = root_pass(svc, root / f"zz_new_dir_{k}", PASS_WAIT + res["tree"]["files"] / 20_000)
            res["root_passes"].append(rp)
            if rp.get("timed_out"):
                break
        # The periodic rescan (READY + rescan_seconds) must not have fallen inside the measured passes.
        res["since_ready_s"] = time.time() - ready
        res["rescan_inside"] = res["since_ready_s"] >= RESCAN
        ok = [x for x in res["root_passes"] if not x.get("timed_out")]
        if ok:
            cpu = statistics.median(x["cpu_s"] for x in ok)
            res["idle_cost_pct"] = {f"{r:.0f}": res["idle"]["cpu_pct"] + 100 * cpu / r
                                    for r in (300.0, RESCAN, 900.0)}
            log("service idle: long-run idle cost (idle + whole-root pass / rescan_seconds): "
                + ", ".join(f"{v:.2f} % at {k} s" for k, v in res["idle_cost_pct"].items()))
    finally:
        if iw:
            iw.stop()
        res["service"] = svc.stop()
        res["loadavg_after"] = loadavg()
    # The watch count is an observation, not a validity check: fewer watches than directories is what
    # watchdog's overflow handling leaves while it re-adds them (see the README).
    res["valid"] = res.get("catchup_complete") == n and res["service"]["exit_code"] == 0
    return res


def one_pass(svc: Service, writer: CkptWriter, d: str, step: int) -> dict:
    """Write checkpoint ``d`` into a run of the watched tree; time its verdict and the per-run pass.

    The event is inside a known run, so only that run is judged (plus one open-files sweep, since a
    verdict changes). The pass ends with a STATUS= notification. Bounded wait: a verdict that does not
    come within settle + PASS_WAIT s is reported as missing (the rescan would find it later)."""
    c0, th0, ovf0 = svc.cpu(), thread_cpu(svc.pid), svc.overflow_lines()
    n_notes, n_events = len(svc.notes), len(svc.events)
    t_call = time.time()
    w = writer.call(op="ckpt", dir=d, step=step)
    p: dict = {"checkpoint": d, "wait_limit_s": SETTLE + PASS_WAIT, "writer_call_s": time.time() - t_call,
               "write_s": w["last_write"] - w["first_write"]}
    t_arr = None
    try:
        t_arr, _ = svc.wait(lambda: next(((t, e) for t, e in svc.events
                                          if e.get("event") == "checkpoint_judged"
                                          and e.get("checkpoint") == d and e.get("status") == "complete"),
                                         None), SETTLE + PASS_WAIT, f"complete verdict of {d}")
        # The STATUS= that ends the pass is sent after the verdict's log line, but the two reader threads
        # stamp on their own, so it can be stamped a few ms *before* the line: allow STATUS_SKEW. (A
        # STATUS= of an earlier in_progress pass of this checkpoint comes >= settle_seconds earlier.)
        t_status = svc.wait(lambda: next((t for t, m in svc.notes[n_notes:]
                                          if m.startswith("STATUS=") and t >= t_arr - STATUS_SKEW), None), 60,
                            "STATUS= after the pass")
        time.sleep(0.2)
        c1, th1 = svc.cpu(), thread_cpu(svc.pid)
        p.update({"verdict_over_settle_s": t_arr - w["last_write"] - SETTLE,
                  "pass_end_over_settle_s": t_status - w["last_write"] - SETTLE, "cpu_s": c1 - c0,
                  "thread_cpu_s": {tid: round(th1[tid] - th0.get(tid, 0.0), 2) for tid in th1}})
        log(f"service idle: a per-run pass {p['cpu_s']:.2f} s CPU, verdict at last write + settle "
            f"+ {p['verdict_over_settle_s']:.3f} s")
    except TimeoutError:
        waited = time.time() - w["last_write"]
        cpu = svc.cpu() - c0
        if t_arr is not None:  # the verdict came; the STATUS= ending its pass did not
            p.update({"verdict_over_settle_s": t_arr - w["last_write"] - SETTLE, "status_missing": True,
                      "cpu_s": cpu})
            log(f"service idle: verdict at last write + settle + {p['verdict_over_settle_s']:.3f} s, "
                f"but no STATUS= after it within 60 s")
        else:
            p.update({"verdict_over_settle_s": None, "timed_out": True, "waited_s": waited,
                      "cpu_s_while_waiting": cpu, "cpu_pct_while_waiting": 100 * cpu / waited})
            log(f"service idle: NO verdict for {d} within {waited:.0f} s of its last write "
                f"({p['cpu_pct_while_waiting']:.0f} % of a core meanwhile)")
    p["other_verdicts_first"] = [e.get("status") for _, e in svc.judged(d) if e.get("status") != "complete"]
    # What the service said after the write (seconds after the last write): the trail of a missing verdict.
    p["after_write"] = {"log": [(round(t - w["last_write"], 3), e.get("event"),
                                 e.get("checkpoint") or e.get("root"),
                                 e.get("status")) for t, e in svc.events[n_events:n_events + 20]],
                        "notes": [(round(t - w["last_write"], 3), m[:60])
                                  for t, m in svc.notes[n_notes:n_notes + 10]]}
    p["watchdog_overflow_warnings"] = svc.overflow_lines() - ovf0
    p["status"] = proc_status(svc.pid)
    log(f"service idle: RSS after the pass {p['status']['VmRSS'] / 1024:.0f} MiB")
    return p


def root_pass(svc: Service, d: Path, wait_s: float = PASS_WAIT) -> dict:
    """Create the empty directory ``d`` directly under the watched root and time the whole-root pass.

    No known run holds ``d``, so the event makes the whole root due; the pass ends with a STATUS=
    notification (``Daemon.judge_watch`` sends one after every pass). It changes no verdict, so it logs no
    line: its wall time is STATUS= arrival - mkdir - settle_seconds (the loop wakes when the root is
    due). The open-files sweep does not run (no verdict is about to change)."""
    c0, th0, ovf0 = svc.cpu(), thread_cpu(svc.pid), svc.overflow_lines()
    n_notes, n_events = len(svc.notes), len(svc.events)
    t0 = time.time()
    d.mkdir()
    p: dict = {"dir": str(d), "wait_limit_s": SETTLE + wait_s}
    try:
        t_status = svc.wait(lambda: next((t for t, m in svc.notes[n_notes:] if m.startswith("STATUS=")),
                                         None),
                            SETTLE + wait_s, f"STATUS= after the whole-root pass for {d.name}")
        time.sleep(0.2)
        c1, th1 = svc.cpu(), thread_cpu(svc.pid)
        p.update({"status_after_mkdir_s": t_status - t0, "wall_s": t_status - t0 - SETTLE, "cpu_s": c1 - c0,
                  "thread_cpu_s": {tid: round(th1[tid] - th0.get(tid, 0.0), 2) for tid in th1},
                  "log_lines": [e.get("event") for _, e in svc.events[n_events:]]})
        log(f"service idle: a whole-root pass ({d.name}) {p['cpu_s']:.2f} s CPU, {p['wall_s']:.2f} s wall "
            f"(STATUS= at mkdir + settle + {p['wall_s']:.2f} s)")
    except TimeoutError:
        waited = time.time() - t0
        p.update({"timed_out": True, "waited_s": waited, "cpu_s_while_waiting": svc.cpu() - c0})
        log(f"service idle: NO STATUS= within {waited:.0f} s of mkdir {d}")
    p["watchdog_overflow_warnings"] = svc.overflow_lines() - ovf0
    p["status"] = proc_status(svc.pid)
    log(f"service idle: RSS after the whole-root pass {p['status']['VmRSS'] / 1024:.0f} MiB")
    return p


def phase_burst(work: Path, writer: CkptWriter, count: int, res: dict) -> dict:
    base = work / "burst"
    shutil.rmtree(base, ignore_errors=True)
    root = base / "root"
    run = root / "run"
    run.mkdir(parents=True)
    res.update({"count": count, "loadavg_before": loadavg()})
    svc = Service(base / "svc", root, "inotify")
    iw = sampler = None
    try:
        svc.wait_ready(60)
        iw = InotifyWait(root, ("close_write",))
        time.sleep(0.5)
        res["before"] = proc_status(svc.pid)
        sampler = RssSampler(svc.pid)
        c0 = svc.cpu()
        w = writer.call(op="burst", run=str(run), start=1, count=count)
        dirs = set(w["dirs"])
        res["write_s"] = w["last_write"] - w["first_write"]
        log(f"service burst: {count} checkpoints ({count * 10:,} files) written in {res['write_s']:.2f} s")

        def all_complete() -> bool:
            seen = {e["checkpoint"] for _, e in svc.events
                    if e.get("event") == "checkpoint_judged" and e.get("status") == "complete"
                    and e.get("checkpoint") in dirs}
            return len(seen) == len(dirs)

        try:
            svc.wait(all_complete, SETTLE + 120, f"{count} complete verdicts")
            res["timed_out"] = False
        except TimeoutError:
            res["timed_out"] = True
        time.sleep(SETTLE + 1.0)  # anything logged twice would arrive by now
        complete = svc.judged(status="complete")
        ours = [(t, e) for t, e in complete if e.get("checkpoint") in dirs]
        res["complete_events"] = len(ours)
        res["complete_distinct"] = len({e["checkpoint"] for _, e in ours})
        res["other_verdicts"] = {}
        for _, e in svc.judged():
            if e.get("checkpoint") in dirs and e.get("status") != "complete":
                res["other_verdicts"][e["status"]] = res["other_verdicts"].get(e["status"], 0) + 1
        res["unknown_checkpoints"] = len({e.get("checkpoint") for _, e in svc.judged()} - dirs)
        last = max((t for t, _ in ours), default=None)
        res["all_judged_after_last_write_s"] = (last - w["last_write"]) if last else None
        res["all_judged_over_settle_s"] = (last - w["last_write"] - SETTLE) if last else None
        res["all_judged_after_first_write_s"] = (last - w["first_write"]) if last else None
        res["cpu_s"] = svc.cpu() - c0
        res["peak_rss_sampled_kib"] = sampler.stop()
        sampler = None
        res["after"] = proc_status(svc.pid)
        markers = [iw.arrival(os.path.join(d, "trainer_state.json")) for d in w["dirs"]]
        seen = [m for m in markers if m is not None]
        res["inotifywait"] = {"trainer_state_close_write": len(seen), "events": iw.count,
                              "last_after_last_write_s": (max(seen) - w["last_write"]) if seen else None}
    finally:
        if sampler:
            sampler.stop()
        if iw:
            iw.stop()
        res["service"] = svc.stop()
        res["loadavg_after"] = loadavg()
    res["valid"] = (res.get("complete_events") == count and res.get("complete_distinct") == count
                    and res["service"]["exit_code"] == 0)
    return res


# --------------------------------------------------------------------------------------------------
# Driver and summary rows


def bench_service(args: argparse.Namespace, work: Path) -> dict:
    if shutil.which("inotifywait") is None:
        raise RuntimeError("inotifywait not found: apt-get install -y inotify-tools (the yardstick)")
    import inspect

    from ckptwatch.poller import CheckpointPoller  # light: os, threading, dataclasses

    poll_interval = float(inspect.signature(CheckpointPoller.__init__).parameters["interval"].default)
    base = work / "service"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    res: dict = {"settle_seconds": SETTLE, "rescan_seconds": RESCAN, "poll_interval_s": poll_interval}
    writer = CkptWriter(hf_template(work))
    try:
        template = make_template(base, writer)
        res["checkpoint_files"] = sorted(os.listdir(template))
        res["checkpoint_bytes"] = sum((template / n).stat().st_size for n in os.listdir(template))
        phases = {"latency_inotify": lambda r: phase_latency(base, writer, "inotify", args.service_samples,
                                                               poll_interval, r),
                  "latency_polling": lambda r: phase_latency(base, writer, "polling",
                                                             args.service_poll_samples, poll_interval, r),
                  "idle": lambda r: phase_idle(base, writer, template, args.service_runs, args.service_idle,
                                               r, passes=args.service_idle_passes,
                                               per_run=args.service_per_run,
                                               active_runs=getattr(args, "service_active_runs", None)),
                  "idle_polling": lambda r: phase_idle(base, writer, template, args.service_runs,
                                                       args.service_idle, r, observer="polling",
                                                       passes=args.service_idle_passes,
                                                       poll_interval=poll_interval,
                                                       per_run=args.service_per_run,
                                                       active_runs=getattr(args, "service_active_runs",
                                                                           None)),
                  "burst": lambda r: phase_burst(base, writer, args.service_burst, r)}
        for key in getattr(args, "service_phase", None) or phases:
            log(f"service: {key}")
            t = time.perf_counter()
            res[key] = {}
            try:
                phases[key](res[key])
            except Exception as exc:  # noqa: BLE001 - keep the other phases' numbers (and this one's so far)
                log(f"service {key}: FAILED: {type(exc).__name__}: {exc}")
                res[key].update({"error": f"{type(exc).__name__}: {exc}", "valid": False})
            res[key]["elapsed_s"] = round(time.perf_counter() - t, 1)
            if key.startswith("latency") and "ours" in res[key]:
                o, y = res[key]["ours"], res[key]["inotifywait"]
                log(f"service {key}: verdict - last write - settle p50 {o['p50']:.3f} p95 {o['p95']:.3f} max "
                    f"{o['max']:.3f} s (n={o['n']}); inotifywait p50 {y.get('p50', float('nan')) * 1e3:.1f} "
                    "ms")
            if not getattr(args, "keep", False):  # each phase's tree goes as soon as it is measured
                shutil.rmtree(base / key.replace("_", "-"), ignore_errors=True)
    finally:
        writer.close()
        if not getattr(args, "keep", False):
            shutil.rmtree(base, ignore_errors=True)
    phases_run = ("latency_inotify", "latency_polling", "idle", "idle_polling", "burst")
    res["valid"] = all(res[k].get("valid") for k in phases_run if k in res)
    return res


def rows(s: dict, add: Callable[..., None]) -> None:
    """Summary-table rows of the service benchmark, through ``bench.run.rows``'s ``add``."""
    for key, label in (("latency_inotify", "inotify"), ("latency_polling", "polling")):
        r = s.get(key, {})
        if "ours" not in r or not r["ours"].get("n"):
            continue
        o, y, tgt = r["ours"], r["inotifywait"], r["target_s_over_settle"]
        yp50 = y.get("p50")
        ytxt = "-" if yp50 is None else f"inotifywait p50 {yp50 * 1e3:.2f} ms, p95 {y['p95'] * 1e3:.2f} ms"
        add("4 service", f"verdict latency - settle, {label}, n={o['n']} (p95)", o["p95"],
            f"p50 {o['p50']:.2f} s, p95 {o['p95']:.2f} s, max {o['max']:.2f} s", yp50, ytxt,
            (o["p50"] / yp50) if yp50 else None, f"p95 <= {tgt:g} s over settle", o["p95"] <= tgt,
            "ratio: p50 / p50")
    i = s.get("idle", {})
    if "idle" in i:
        cpu, ycpu = i["idle"]["cpu_pct"], i["inotifywait_idle"]["cpu_pct"]
        files = i["tree"]["files"]
        add("4 service", f"idle CPU, {files:,} files, {i['idle']['wall_s']:.0f} s", cpu,
            f"{cpu:.2f} % of a core", ycpu, f"inotifywait -m -r {ycpu:.2f} %", None, "< 1 %", cpu < 1.0,
            f"{i['idle']['watchdog_overflow_warnings']} watchdog overflow warnings; inotify watches "
            f"{min(i['idle']['inotify_watches_sampled']):,}-{max(i['idle']['inotify_watches_sampled']):,} "
            f"of {i['tree']['dirs']:,} dirs")
        rss = i["idle"]["status"]["VmRSS"] / 1024
        yrss = i["inotifywait_idle"]["status"]["VmRSS"] / 1024
        add("4 service", "idle RSS (VmHWM peak since start)", rss,
            f"{rss:.0f} MiB (peak {i['idle']['status']['VmHWM'] / 1024:.0f} MiB)", yrss,
            f"inotifywait {yrss:.1f} MiB", rss / yrss if yrss else None, "< 150 MB", rss * 2**20 < 150e6)
        torch = bool(i["mapped"]["torch"])
        add("4 service", "torch mapped in the service (/proc/PID/maps)", torch, "yes" if torch else "no",
            None, "-", None, "no", not torch, "numpy mapped: " + ("yes" if i["mapped"]["numpy"] else "no"))
        add("4 service", "catch-up: start to READY=1", i["catchup_s"],
            f"{i['catchup_s']:.1f} s ({i['catchup_cpu_s']:.1f} s CPU)", i["inotifywait_setup_s"],
            f"inotifywait -r setup {i['inotifywait_setup_s']:.2f} s; "
            f"find -printf {i['find']['median']:.2f} s",
            i["catchup_s"] / i["find"]["median"], "(context)", None, "ratio: vs find")
    if "pass" in i:
        ps = i.get("passes") or [i["pass"]]
        files = i["tree"]["files"]
        ok = [x for x in ps if not x.get("timed_out")]
        if len(ok) < len(ps):
            p = next(x for x in ps if x.get("timed_out"))
            add("4 service", f"verdict latency - settle in the {files:,}-file root (a per-run pass)", None,
                f"none within {p['waited_s']:.0f} s ({p['cpu_pct_while_waiting']:.0f} % of a core meanwhile)",
                None, "-", None, "<= 1 s over settle (inotify)", False,
                f"{p['watchdog_overflow_warnings']} watchdog overflow warnings")
        if ok:
            lat = [x["verdict_over_settle_s"] for x in ok]
            add("4 service",
                f"verdict latency - settle in the {files:,}-file root (a per-run pass), n={len(lat)}",
                max(lat), ", ".join(f"{v:.3f} s" for v in lat), None, "-", None,
                "<= 1 s over settle (inotify)", max(lat) <= 1.0)
            cpu = statistics.median(x["cpu_s"] for x in ok)
            add("4 service", f"a per-run pass (each event in a run), n={len(ok)}", cpu,
                f"{cpu:.2f} s CPU ({', '.join(f'{x:.2f}' for x in (y['cpu_s'] for y in ok))})",
                i["find"]["median"], f"find -printf over the root {i['find']['median']:.2f} s",
                cpu / i["find"]["median"], "(context)", None, "one run of 100 ckpts + one open-files sweep")
    rp = [x for x in i.get("root_passes", []) if not x.get("timed_out")]
    if "root_passes" in i and not rp:
        add("4 service", "a whole-root pass (rescan, overflow, new run dir)", None, "no STATUS= in time",
            None, "-", None, "< 1 % idle incl. rescan", False)
    if rp:
        cpu = statistics.median(x["cpu_s"] for x in rp)
        wall = statistics.median(x["wall_s"] for x in rp)
        add("4 service", f"a whole-root pass (rescan, overflow, new run dir), n={len(rp)}", cpu,
            f"{cpu:.2f} s CPU, {wall:.2f} s wall ({', '.join(f'{x:.2f}' for x in (y['cpu_s'] for y in rp))} "
            "s CPU)",
            i["find"]["median"], f"find -printf {i['find']['median']:.2f} s", cpu / i["find"]["median"],
            "(context)", None, "no verdict changes: no open-files sweep")
        for r, v in (i.get("idle_cost_pct") or {}).items():
            add("4 service", f"idle CPU incl. a whole-root pass every {r} s", v,
                f"{i['idle']['cpu_pct']:.2f} % + {100 * cpu / float(r):.2f} % = {v:.2f} % of a core", None,
                "-", None, "< 1 %", v < 1.0, "the default rescan_seconds" if float(r) == RESCAN else "")
    if "pass" in i:
        allp = [x for x in [*(i.get("passes") or [i["pass"]]), *i.get("root_passes", [])] if "status" in x]
        rss = [x["status"]["VmRSS"] / 1024 for x in allp]
        before = i["idle"]["status"]["VmRSS"] / 1024
        add("4 service", "RSS: idle -> after each per-run pass -> after each whole-root pass", max(rss),
            " -> ".join(f"{v:.0f}" for v in [before, *rss]) + " MiB", None, "-", None, "< 150 MB",
            max(rss) * 2**20 < 150e6)
    b = s.get("burst", {})
    if "complete_events" in b:
        n = b["count"]
        t_all = b["all_judged_over_settle_s"]
        yl = b["inotifywait"]["last_after_last_write_s"]
        add("4 service", f"burst of {n}: all judged, after last write - settle", t_all,
            f"{t_all:.2f} s" if t_all is not None else "never", yl,
            f"inotifywait last event {yl * 1e3:.0f} ms" if yl is not None else "-", None, "(bounded)",
            None, f"write {b['write_s']:.1f} s")
        add("4 service", f"burst of {n}: complete verdicts (events / distinct)", b["complete_events"],
            f"{b['complete_events']} / {b['complete_distinct']}",
            b["inotifywait"]["trainer_state_close_write"],
            f"inotifywait saw {b['inotifywait']['trainer_state_close_write']}", None, f"exactly {n}",
            b["complete_events"] == n and b["complete_distinct"] == n,
            ", ".join(f"{k} {v}" for k, v in b["other_verdicts"].items()) or "no other verdicts")
        pk = max(b["peak_rss_sampled_kib"], b["after"]["VmHWM"]) / 1024
        before = b["before"]["VmRSS"] / 1024
        add("4 service", f"burst of {n}: peak RSS", pk, f"{pk:.0f} MiB", before,
            f"before the burst {before:.0f} MiB", pk / before, "< 150 MB", pk * 2**20 < 150e6)
