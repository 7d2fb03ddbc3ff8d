"""Mirroring to S3 on a real S3 HTTP endpoint (moto's server mode on 127.0.0.1, tests/s3server.py).

Target level: a multipart upload is invisible until committed, and an aborted or failed one leaves no
object; secrets never show. CLI level, on a real Trainer run: mirror to s3://bucket/prefix, restore,
judge the restored checkpoint complete; a tampered copy (a flipped byte, a deleted object) is refused
by restore and verify, naming the object. Faults: a missing bucket, wrong credentials, and the endpoint
stopped mid-copy then started again on the same port.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.engine import check_root
from ckptwatch.layouts.base import CheckOptions
from ckptwatch.mirror import fsspec_target
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.copy import mirror_checkpoint
from ckptwatch.mirror.fsspec_target import FsspecTarget, UnsupportedTarget
from ckptwatch.mirror.restore import verify_copy
from tests.helpers import run_cli
from tests.s3server import S3Server, point_env_at
from tests.servers import free_port

MIB = 1 << 20


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _mirror(run: Path, to: str, *extra: str) -> tuple[int, dict]:
    r = run_cli("mirror", str(run), "--to", to, "--settle", "0", "--json", *extra, timeout=180)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def _results(doc: dict) -> dict[str, dict]:
    [run] = doc["runs"]
    return {os.path.basename(c["checkpoint"]): c for c in run["mirror"]["checkpoints"]}


# --- target level -------------------------------------------------------------------------------------


def test_multipart_upload_appears_only_at_commit_and_abort_leaves_nothing(s3, monkeypatch):
    """A file bigger than the part size goes up in parts while written, yet no object shows until
    commit; an aborted one leaves neither an object nor an open multipart upload."""
    monkeypatch.setattr(fsspec_target, "BLOCK_SIZE", 5 * MIB)  # S3's smallest part: keeps the test small
    t = FsspecTarget(s3.url("pre"))
    data = os.urandom(12 * MIB)
    up = t.open_write("run/ckpt/big.bin")
    for i in range(0, len(data), 4 * MIB):
        up.write(memoryview(data)[i:i + 4 * MIB])
    assert s3.multipart_uploads() == ["pre/run/ckpt/big.bin"]  # parts are up...
    assert s3.keys() == {} and t.list("run") == {} and t.stat("run/ckpt/big.bin") is None  # ...no object
    up.commit()
    assert s3.keys() == {"pre/run/ckpt/big.bin": len(data)} and s3.multipart_uploads() == []
    with t.open_read("run/ckpt/big.bin") as f:
        assert f.read() == data
    up = t.open_write("run/ckpt/other.bin")
    up.write(data)
    up.abort()
    del up  # nothing left for fsspec's __del__ to publish
    assert s3.multipart_uploads() == [] and set(s3.keys()) == {"pre/run/ckpt/big.bin"}


def test_part_size_grows_so_a_huge_file_fits_in_s3s_10000_parts(s3, monkeypatch):
    """Parts start at BLOCK_SIZE and double every PARTS_PER_STEP parts (the file's size is unknown when
    its upload opens): a step of 2 parts here, so 5, 5, 10 MiB parts; the object is whole."""
    monkeypatch.setattr(fsspec_target, "BLOCK_SIZE", 5 * MIB)
    monkeypatch.setattr(fsspec_target, "PARTS_PER_STEP", 2)
    assert [fsspec_target.part_size(n) // MIB for n in (0, 1, 2, 3, 4)] == [5, 5, 10, 10, 20]
    assert fsspec_target.part_size(10**6) == fsspec_target.MAX_PART
    t = FsspecTarget(s3.url("pre"))
    data = os.urandom(23 * MIB)
    up = t.open_write("big.bin")
    for i in range(0, len(data), MIB):
        up.write(data[i:i + MIB])
    assert s3.multipart_uploads() == ["pre/big.bin"]
    up.commit()  # parts go up several at once: their sizes are read from the object's parts
    client = s3.server.client()
    count = client.head_object(Bucket=s3.bucket, Key="pre/big.bin", PartNumber=1)["PartsCount"]
    sizes = [client.head_object(Bucket=s3.bucket, Key="pre/big.bin", PartNumber=n)["ContentLength"]
             for n in range(1, count + 1)]
    assert [n // MIB for n in sizes] == [5, 5, 10, 3] and sum(sizes) == len(data)
    with t.open_read("big.bin") as f:
        assert f.read() == data


def test_upload_failing_mid_write_leaves_no_object(s3, monkeypatch, tmp_path):
    """The endpoint goes away while parts are being written: the write fails with an OSError naming the
    object, and once the endpoint is back there is no object (an incomplete multipart upload at most,
    which no listing shows)."""
    monkeypatch.setattr(fsspec_target, "BLOCK_SIZE", 5 * MIB)
    with S3Server() as private:
        point_env_at(monkeypatch, private.endpoint, str(tmp_path))
        t = FsspecTarget(s3.url("pre"))
        up = t.open_write("a/big.bin")
        up.write(os.urandom(6 * MIB))  # one part up
        private.stop()
        with pytest.raises(OSError) as caught:
            up.write(os.urandom(6 * MIB))  # the next part cannot go up
            up.commit()
        assert caught.value.filename == f"s3://{s3.bucket}/pre/a/big.bin"
        up.abort()  # harmless after the failure
        private.start()
        assert t.list("a") == {} and t.stat("a/big.bin") is None
        assert s3.keys("pre/") == {}


def test_urls_it_cannot_use_are_refused_and_secrets_never_show(s3):
    """Only s3:// object storage (other fsspec backends write in place); no credentials in the URL;
    describe() and the URL show bucket and key only, never the secret in the environment."""
    for bad in ("sftp://host/x", "file:///tmp/x", "s3://", "s3://key:secret@bucket/x", "s3://b/../x"):
        with pytest.raises(UnsupportedTarget):
            FsspecTarget(bad)
    t = FsspecTarget(s3.url("pre") + "/")
    assert t.url == s3.url("pre") and t.describe("r/c/f") == s3.url("pre", "r/c/f")
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in repr(vars(t)) and secret not in t.describe("x")


# --- CLI: a real Trainer run, mirrored, restored, tampered with ---------------------------------------


@pytest.mark.slow  # a real Trainer run is built
def test_trainer_run_mirrored_to_s3_restores_complete(artefact, s3, tmp_path):
    """`mirror --to s3://bucket/prefix` commits every checkpoint in its native layout under
    prefix/<run>/<checkpoint>/; `verify URL` finds it good; `restore URL DEST` brings back the same
    bytes, judged complete by `once`; a second mirror writes nothing."""
    run = artefact("hf_full")
    to = s3.url("backups")
    code, doc = _mirror(run, to, "--verify", "full")
    assert code == 0, doc
    results = _results(doc)
    assert list(results) == ["checkpoint-6", "checkpoint-4", "checkpoint-2"]
    assert {c["result"] for c in results.values()} == {"committed"}
    assert results["checkpoint-6"]["copy"] == s3.url("backups", "hf_full", "checkpoint-6")
    keys = s3.keys("backups/hf_full/checkpoint-6/")
    source = {k: len(v) for k, v in _files(run / "checkpoint-6").items()}
    assert {k.rsplit("/", 1)[-1]: v for k, v in keys.items() if mf.PREFIX not in k} == source
    assert {f"backups/hf_full/checkpoint-6/{n}" for n in (mf.MANIFEST_NAME, mf.MARKER_NAME)} <= set(keys)
    copy = s3.url("backups", "hf_full", "checkpoint-6")
    v = run_cli("verify", copy, "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["ok"], v.stdout + v.stderr
    dest = tmp_path / "restored" / "hf_full" / "checkpoint-6"
    r = run_cli("restore", copy, str(dest))
    assert r.returncode == 0, r.stderr
    assert _files(dest) == _files(run / "checkpoint-6")
    once = run_cli("once", str(dest.parent), "--json", "--settle", "0", "--no-loss")
    [judged] = json.loads(once.stdout)["runs"]
    assert [c["status"] for c in judged["checkpoints"]] == ["complete"]
    assert judged["latest_resumable"] == str(dest)
    code, doc = _mirror(run, to)
    assert code == 0 and {c["result"] for c in _results(doc).values()} == {"up_to_date"}


@pytest.mark.slow
@pytest.mark.parametrize("tamper", ["flip", "delete"])
def test_tampered_s3_copy_is_refused_naming_the_object(artefact, s3, tmp_path, tamper):
    """An object of a committed copy overwritten with one byte flipped, or deleted: `verify URL` and
    `restore URL DEST` refuse, naming its s3:// URL, and DEST is not created."""
    run = artefact("hf_full")
    code, _ = _mirror(run, s3.url("backups"))
    assert code == 0
    key = "backups/hf_full/checkpoint-4/model.safetensors"
    client = s3.server.client()
    if tamper == "flip":
        data = bytearray(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0x01
        client.put_object(Bucket=s3.bucket, Key=key, Body=bytes(data))  # same size, other bytes
    else:
        client.delete_object(Bucket=s3.bucket, Key=key)
    copy = s3.url("backups", "hf_full", "checkpoint-4")
    named = f"s3://{s3.bucket}/{key}"
    v = run_cli("verify", copy)
    assert v.returncode == 1 and named in v.stdout, v.stdout + v.stderr
    assert ("hash" if tamper == "flip" else "missing") in v.stdout
    dest = tmp_path / "restored"
    r = run_cli("restore", copy, str(dest))
    assert r.returncode == 1 and named in r.stderr, r.stderr
    assert not dest.exists()


# --- faults -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_missing_bucket_fails_naming_it_and_commits_nothing(artefact, s3, tmp_path):
    """A bucket that does not exist: every checkpoint fails with S3's reason and the object named,
    exit 1, nothing created."""
    run = artefact("hf_full")
    missing = f"{s3.bucket}-missing"
    code, doc = _mirror(run, f"s3://{missing}/backups")
    assert code == 1
    for c in _results(doc).values():
        assert c["result"] == "failed"
        assert "bucket does not exist" in c["reason"] and f"s3://{missing}/backups/hf_full/" in c["reason"]
    assert missing not in [b["Name"] for b in s3.server.client().list_buckets()["Buckets"]]


@pytest.mark.slow
def test_wrong_credentials_fail_and_right_ones_work(artefact, s3, tmp_path, monkeypatch):
    """With the endpoint checking credentials (moto's IAM auth), an unknown key and a wrong secret both
    fail every checkpoint (at the first request: the commit marker's HEAD, which S3 answers "Forbidden"
    without a body) with a hint at the credentials, never printing the secret; the right key mirrors."""
    run = artefact("hf_full")
    to = s3.url("backups")
    key, secret = s3.server.require_credentials()
    try:
        for bad_key, bad_secret in (("AKIDNOSUCHKEY", "whatever-secret-1"), (key, "wrong-secret-value-2")):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", bad_key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
            r = run_cli("mirror", str(run), "--to", to, "--settle", "0", "--json", timeout=180)
            assert r.returncode == 1, r.stdout + r.stderr
            reasons = [c["reason"] for c in _results(json.loads(r.stdout)).values()]
            assert reasons and all("Forbidden" in x and "check the credentials" in x and mf.MARKER_NAME in x
                                   for x in reasons), reasons  # S3 answers a HEAD with no detail
            assert bad_secret not in r.stdout + r.stderr
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        code, doc = _mirror(run, to)
        assert code == 0 and {c["result"] for c in _results(doc).values()} == {"committed"}, doc
        assert secret not in json.dumps(doc)
    finally:
        s3.server.accept_any_credentials()


def test_unreachable_endpoint_verify_and_restore_refuse_naming_the_object(monkeypatch, tmp_path):
    """Nothing listens at the endpoint: `verify URL` and `restore URL DEST` exit 1 with an `unreadable`
    finding naming the first object they needed (not an internal error), and DEST is not created."""
    point_env_at(monkeypatch, f"http://127.0.0.1:{free_port()}", str(tmp_path))
    copy = "s3://bucket/backups/run/checkpoint-6"
    marker = f"{copy}/{mf.MARKER_NAME}"
    v = run_cli("verify", copy, "--json", timeout=60)
    assert v.returncode == 1, v.stderr
    [finding] = json.loads(v.stdout)["findings"]
    assert finding["kind"] == "unreadable" and finding["file"] == marker
    assert "Could not connect" in finding["message"]
    r = run_cli("restore", copy, str(tmp_path / "dest"), timeout=60)
    assert r.returncode == 1 and marker in r.stderr and "not checked" in r.stderr, r.stderr
    assert not (tmp_path / "dest").exists()


@pytest.mark.slow
def test_endpoint_stopped_mid_copy_then_back_completes(artefact, s3, tmp_path, monkeypatch):
    """The endpoint stops after a few files of a checkpoint: the copy fails naming an object, commits
    nothing (restore refuses it as no backup); started again on the same port, a rerun through the CLI
    commits it and it verifies."""
    run = artefact("hf_full")
    with S3Server() as private:
        point_env_at(monkeypatch, private.endpoint, str(tmp_path))
        target = FsspecTarget(s3.url("backups"))
        [report] = check_root(str(run), CheckOptions(settle_seconds=0), time.time()).runs
        newest = report.checkpoints[-1]
        done: list[str] = []

        def stop_after_three(rel: str) -> None:
            done.append(rel)
            if len(done) == 3:
                private.stop()

        out = mirror_checkpoint(newest, str(run), target, MirrorConfig(to=target.url, parallel=1),
                                now=time.time(), progress=stop_after_three)
        assert not private.running
        assert out.result == "failed", out
        assert f"s3://{s3.bucket}/backups/hf_full/checkpoint-6/" in out.reason, out.reason
        private.start()  # the same port: the same endpoint URL works again
        assert mf.copy_state(target, "hf_full/checkpoint-6").state == "partial"
        copy = s3.url("backups", "hf_full", "checkpoint-6")
        refused = run_cli("restore", copy, str(tmp_path / "r"))
        assert refused.returncode == 1 and "not a backup" in refused.stderr, refused.stderr
        code, doc = _mirror(run, s3.url("backups"))
        assert code == 0, doc
        assert _results(doc)["checkpoint-6"]["result"] == "committed"
        manifest, findings = verify_copy(FsspecTarget(copy))
        assert manifest is not None and findings == []
        assert s3.multipart_uploads() == []


@pytest.mark.slow  # a real 4-rank DCP run is built
def test_dcp_run_mirrored_to_s3_restores_complete(artefact, s3, tmp_path):
    """A 4-rank torch.distributed.checkpoint run through S3 and back: the restored newest checkpoint is
    byte for byte the source and judged complete."""
    run = artefact("dcp")
    code, doc = _mirror(run, s3.url("b"))
    assert code == 0 and {c["result"] for c in _results(doc).values()} == {"committed"}, doc
    dest = tmp_path / "restored" / "dcp" / "step_300"
    r = run_cli("restore", s3.url("b", "dcp", "step_300"), str(dest))
    assert r.returncode == 0, r.stderr
    assert _files(dest) == _files(run / "step_300")
    once = run_cli("once", str(dest.parent), "--json", "--settle", "0", "--no-loss")
    [judged] = json.loads(once.stdout)["runs"]
    assert [c["status"] for c in judged["checkpoints"]] == ["complete"]
