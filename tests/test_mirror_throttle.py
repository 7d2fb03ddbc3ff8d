"""``max_rate``: the token bucket's arithmetic on a fake clock, and real mirrors of real checkpoints under a
cap, whose fake elapsed time is what the bytes written and the rate say (no wall-clock assertion).

The fake clock is shared by threads the way real time is: a sleep ends at the time the sleeper read the
clock plus its wait, and the clock shows the latest end anyone reached (concurrent sleeps overlap).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.mirror import service
from ckptwatch.mirror import throttle as th
from ckptwatch.mirror.copy import mirror_run
from ckptwatch.mirror.manifest import OURS
from ckptwatch.mirror.restore import verify_copy
from ckptwatch.mirror.target import LocalTarget
from tests.helpers import run_cli


class FakeTime:
    """A clock that moves only when someone sleeps; safe to share between threads."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()
        self._read = threading.local()

    def clock(self) -> float:
        with self._lock:
            self._read.at = self.now
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now = max(self.now, getattr(self._read, "at", self.now) + seconds)


class RecordingUpload:
    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.state = "open"

    def write(self, data) -> None:
        self.pieces.append(bytes(data))

    def commit(self, mtime_ns=None) -> None:
        self.state = f"committed {mtime_ns}"

    def abort(self) -> None:
        self.state = "aborted"


class RecordingTarget:
    url = "mem://"

    def __init__(self) -> None:
        self.uploads: list[RecordingUpload] = []

    def open_write(self, name: str) -> RecordingUpload:
        self.uploads.append(RecordingUpload())
        return self.uploads[-1]


def test_a_full_bucket_lets_one_second_through_then_holds_the_rate():
    """Starts full (one second of rate); then each byte costs 1/rate seconds; idle time refills it, but
    never beyond the burst."""
    t = FakeTime()
    b = th.TokenBucket(1000, clock=t.clock, sleep=t.sleep)
    b.take(600)
    b.take(400)
    assert t.sleeps == [] and t.now == 0.0  # the burst
    b.take(250)
    assert t.sleeps == [0.25] and t.now == 0.25
    t.now += 100.0  # idle for 100 s: the bucket holds 1000, not 100,000
    b.take(1000)
    assert t.sleeps == [0.25]
    b.take(2000)
    assert t.sleeps == [0.25, 2.0]
    assert (b.taken, b.slept) == (4250, 2.25)


def test_a_long_write_is_sliced_and_takes_its_bytes_over_rate():
    """One 10 MB write at 1 MB/s: sent in slices of a tenth of a second of rate, all bytes in order, and
    the clock ends at (bytes - burst) / rate = 9 s."""
    t = FakeTime()
    target = th.throttled(RecordingTarget(), 1_000_000, clock=t.clock, sleep=t.sleep)
    data = bytes(range(256)) * (10_000_000 // 256) + b"x" * (10_000_000 % 256)
    upload = target.open_write("run/ckpt/model.safetensors")
    upload.write(memoryview(data))
    upload.commit(123)
    [inner] = target.inner.uploads
    assert b"".join(inner.pieces) == data and inner.state == "committed 123"
    assert max(len(p) for p in inner.pieces) == 100_000 and len(inner.pieces) == 100
    assert t.now == pytest.approx(9.0)
    assert target.bucket.taken == 10_000_000


def test_a_slice_is_never_below_64_kib():
    t = FakeTime()
    b = th.TokenBucket(10, clock=t.clock, sleep=t.sleep)
    assert b.slice == th.MIN_SLICE
    up = th.ThrottledUpload(RecordingUpload(), b)
    up.write(b"a" * (th.MIN_SLICE + 1))
    assert [len(p) for p in up.inner.pieces] == [th.MIN_SLICE, 1]
    up.abort()
    assert up.inner.state == "aborted"


def test_threads_share_one_bucket():
    """Eight threads reserve 1000 bytes each at the same instant from a 1000 B/s bucket: whatever the
    order, the waits are 0, 1, ..., 7 s (each queues behind the others), not eight times the rate."""
    t = FakeTime()
    b = th.TokenBucket(1000, clock=lambda: 0.0, sleep=t.sleep)  # the instant does not move while they queue
    start = threading.Barrier(8)

    def one() -> None:
        start.wait()
        b.take(1000)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for x in threads:
        x.start()
    for x in threads:
        x.join()
    assert sorted(t.sleeps) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert b.taken == 8000


def test_no_rate_means_no_wrapper_and_a_bad_rate_is_refused():
    target = LocalTarget("/nonexistent")
    assert th.throttled(target, None) is target
    for bad in (0, -1):
        with pytest.raises(ValueError, match="above 0"):
            th.TokenBucket(bad)


def _data_bytes(to, run_name: str) -> tuple[int, int]:
    """(bytes of the checkpoints' own files in the copies, bytes of our manifests and markers)."""
    data = ours = 0
    for p in (to / run_name).rglob("*"):
        if p.is_file():
            if p.name in OURS:
                ours += p.stat().st_size
            else:
                data += p.stat().st_size
    return data, ours


@pytest.mark.parametrize("parallel", [1, 3])
def test_a_real_mirror_under_a_cap_takes_bytes_over_rate(artefact, tmp_path, parallel):
    """A real Trainer run mirrored at 256 KiB/s (parallel copies sharing the bucket): every copy verifies,
    every byte written went through the bucket, and the fake elapsed time is (bytes - burst) / rate."""
    run = artefact("hf_full")
    to = tmp_path / "backup"
    t = FakeTime()
    rate = 256 << 10
    target = th.throttled(LocalTarget(str(to)), rate, clock=t.clock, sleep=t.sleep)
    [report] = check_root(str(run), CheckOptions(settle_seconds=0), time.time()).runs
    outcomes = mirror_run(report, target, MirrorConfig(to=str(to), parallel=parallel), now=0.0)
    assert {o.result for o in outcomes} == {"committed"}
    for o in outcomes:
        manifest, findings = verify_copy(LocalTarget(str(to)), f"hf_full/{o.checkpoint.rsplit('/', 1)[-1]}")
        assert manifest is not None and findings == []
    data, ours = _data_bytes(to, "hf_full")
    taken = target.bucket.taken
    assert data + ours <= taken <= data + ours + 64 * len(outcomes) * 1024  # + the journals (removed)
    assert data > 4 * rate  # long enough that the cap, not the burst, sets the time
    assert t.now == pytest.approx((taken - rate) / rate, rel=1e-9)


def test_the_service_job_honours_max_rate(artefact, tmp_path, monkeypatch):
    """run_job (the service's worker) caps its copies with the configured max_rate: one bucket for the job."""
    run = artefact("hf_full")
    to = tmp_path / "backup"
    t = FakeTime()
    buckets: list[th.TokenBucket] = []

    def fake_throttled(target, max_rate):
        wrapped = th.throttled(target, max_rate, clock=t.clock, sleep=t.sleep)
        buckets.append(wrapped.bucket)
        return wrapped

    monkeypatch.setattr(service, "throttled", fake_throttled)
    [report] = check_root(str(run), CheckOptions(settle_seconds=0), time.time()).runs
    config = MirrorConfig(to=str(to), max_rate=128 << 10)
    done = service.run_job(list(reversed(report.checkpoints)), report.root, config, 0.0)
    assert [a.outcome.result for a in done] == ["committed"] * 3
    [bucket] = buckets
    data, ours = _data_bytes(to, "hf_full")
    assert data + ours <= bucket.taken
    assert t.now == pytest.approx((bucket.taken - bucket.burst) / bucket.rate, rel=1e-9)


def test_the_cli_flag_and_config_check(artefact, tmp_path):
    """--max-rate takes what max_rate takes (a bad one is a usage error naming the flag); `config check`
    says the cap."""
    run = artefact("hf_full")
    to = tmp_path / "backup"
    r = run_cli("mirror", str(run), "--to", str(to), "--max-rate", "fast", "--settle", "0")
    assert r.returncode == 2 and "--max-rate" in r.stderr and "'fast' is not a rate" in r.stderr
    assert not to.exists()
    r = run_cli("mirror", str(run), "--to", str(to), "--max-rate", "1GiB/s", "--settle", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert {c["result"] for c in json.loads(r.stdout)["runs"][0]["mirror"]["checkpoints"]} == {"committed"}
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[watch]]\npath = "{run}"\n[watch.mirror]\nto = "{to}"\nmax_rate = "100MB"\n')
    r = run_cli("config", "check", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "2 files at once, at most 100.0 MiB/s)" in r.stdout
