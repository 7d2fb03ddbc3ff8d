"""Mirror to S3 against boto3's ``upload_file``, to the same loopback endpoint (issue 12: floor 0.8x).

    python -m bench.s3upload                 # 512 MiB in 8 big files + a 20-file Trainer checkpoint, 3 runs
    python -m bench.s3upload --quick         # 64 MiB, 3 runs: a smoke test
    python -m bench.s3upload --mib 1024 --files 8 --repeat 5

The endpoint is moto's server mode (``python -m moto.server``) in a child process on 127.0.0.1, the same
one for both sides, started and stopped here. The checkpoint is the bench's real 20-file Trainer
template plus ``--files`` random ``extra_state/part-*.dat`` files of ``--mib`` MiB in all (a Trainer
checkpoint that holds big files, judged ``complete``).

- **Ours**: the whole ``python -m ckptwatch mirror RUN --to s3://bench/ours-N --settle 0`` process:
  judging the run, reading and hashing every file once (xxh3_128), uploading (s3fs: one PUT per small
  file, 8 MiB multipart parts otherwise, ``parallel`` = 2 files at once), checking sizes, manifest
  and commit marker.
- **Yardstick**: a whole Python process that calls boto3's ``upload_file`` for each file of the
  checkpoint, one after another (boto3's TransferManager: 8 MiB parts, 10 threads per file): what a
  hand-written backup script does. No hashing, no verification, no marker.

Each side runs ``--repeat`` times (after one warm-up each), alternating, to a fresh prefix that is
deleted afterwards (not timed). The figure is the median wall time; the ratio is yardstick / ours (above
1: ours is faster). Results go to ``bench/out/s3upload.json``. The machine is shared: compare ratios
from one run, not seconds across days.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import PY, REPO, child_env, hf_template, loadavg, log, run_once

OUT = REPO / "bench" / "out"
BUCKET = "bench"
FLOOR = 0.8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _s3_env(endpoint: str, work: Path) -> dict[str, str]:
    env = child_env()
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(work / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    return env


class MotoChild:
    """``python -m moto.server`` on 127.0.0.1, listening within ``timeout`` seconds or an error."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen([PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not listen on 127.0.0.1:{self.port} within {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


def build_run(work: Path, total: int, files: int) -> Path:
    """``work/s3/run/checkpoint-2``: the Trainer template plus ``files`` random files of ``total`` bytes."""
    run = work / "s3" / "run"
    shutil.rmtree(run.parent, ignore_errors=True)
    ckpt = run / "checkpoint-2"
    shutil.copytree(hf_template(work), ckpt)
    extra = ckpt / "extra_state"
    extra.mkdir()
    each = max(1, total // files)
    for i in range(files):
        with open(extra / f"part-{i:05d}.dat", "wb") as f:
            left = each
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))
                left -= n
    old = time.time() - 3600
    for p in ckpt.rglob("*"):
        os.utime(p, (old, old))
    return run


def boto3_child(ckpt: str, bucket: str, prefix: str) -> None:
    """The yardstick's process: boto3 ``upload_file`` of every file of ``ckpt``, one after another."""
    import boto3

    client = boto3.client("s3")
    root = Path(ckpt)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(root)}")


def _client(endpoint: str):  # noqa: ANN202 - boto3's client type is generated at run time
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench-secret")


def _objects(client, prefix: str) -> dict[str, int]:  # noqa: ANN001
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def _clear(client, prefix: str) -> None:  # noqa: ANN001
    keys = list(_objects(client, prefix))
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


def measure_s3(run: Path, work: Path, repeat: int, parallel: int | None = None) -> dict:
    """Both sides, alternating, ``repeat`` times after one warm-up each, on a moto child started here:
    ``ckptwatch mirror`` of ``run`` (its one checkpoint ``checkpoint-*``) and boto3 ``upload_file`` of the
    same files. Each upload is checked (every key, its size) and deleted before the next."""
    [ckpt] = sorted(run.glob("checkpoint-*"))
    source = {str(p.relative_to(ckpt)): p.stat().st_size for p in ckpt.rglob("*") if p.is_file()}
    total = sum(source.values())
    log(f"s3: checkpoint of {len(source)} files, {total / 2**20:.1f} MiB")
    server = MotoChild()
    try:
        env = _s3_env(server.endpoint, work)
        client = _client(server.endpoint)
        client.create_bucket(Bucket=BUCKET)
        ours, theirs, rss, load = [], [], [], [loadavg()]
        for i in range(repeat + 1):  # run 0 is the warm-up of each side
            prefix = f"ours-{i}"
            to = f"s3://{BUCKET}/{prefix}"
            mirror = [PY, "-m", "ckptwatch", "mirror", str(run), "--to", to, "--settle", "0",
                      *(["--parallel", str(parallel)] if parallel else [])]
            wall, peak, code = run_once(mirror, env)
            if code != 0:
                raise RuntimeError(f"ckptwatch mirror exited {code}")
            got = {k.split("/", 3)[3]: v for k, v in _objects(client, prefix + "/").items()}
            missing = {k for k in source if got.get(k) != source[k]}
            if missing:
                raise RuntimeError(f"ckptwatch mirror: missing or other sizes: {sorted(missing)[:3]}")
            _clear(client, prefix + "/")
            prefix = f"boto3-{i}"
            upload = [PY, "-m", "bench.s3upload", "--boto3-child", str(ckpt), BUCKET, prefix]
            wall_b, _, code = run_once(upload, env)
            if code != 0 or len(_objects(client, prefix + "/")) != len(source):
                raise RuntimeError(f"boto3 upload_file child exited {code} or missed files")
            _clear(client, prefix + "/")
            if i:
                ours.append(wall)
                theirs.append(wall_b)
                rss.append(peak)
            log(f"s3: run {i}{' (warm-up)' if not i else ''}: ckptwatch mirror {wall:.2f} s, boto3 "
                f"upload_file {wall_b:.2f} s")
        load.append(loadavg())
    finally:
        server.stop()
    ours_m, theirs_m = statistics.median(ours), statistics.median(theirs)
    ratio = theirs_m / ours_m
    result = {"bytes": total, "files": len(source), "repeat": repeat,
              "ckptwatch_mirror_s": {"median": ours_m, "runs": ours, "peak_rss_kib": max(rss)},
              "boto3_upload_file_s": {"median": theirs_m, "runs": theirs},
              "ratio": ratio, "floor": FLOOR, "met": ratio >= FLOOR, "loadavg": load,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--mib", type=int, default=512, help="MiB of big files added to the checkpoint")
    ap.add_argument("--files", type=int, default=8, help="how many big files")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=None, help="ckptwatch mirror --parallel")
    ap.add_argument("--quick", action="store_true", help="64 MiB: a smoke test")
    ap.add_argument("--workdir", default="/tmp/ckptwatch-bench")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    ap.add_argument("--boto3-child", nargs=3, metavar=("CKPT", "BUCKET", "PREFIX"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.boto3_child:
        boto3_child(*args.boto3_child)
        return 0
    mib = 64 if args.quick else args.mib
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    run = build_run(work, mib << 20, args.files)
    try:
        result = measure_s3(run, work, args.repeat, args.parallel)
    finally:
        if not args.keep:
            shutil.rmtree(work / "s3", ignore_errors=True)
    total, ours_m, theirs_m, ratio = result["bytes"], result["ckptwatch_mirror_s"]["median"], \
        result["boto3_upload_file_s"]["median"], result["ratio"]
    rss = result["ckptwatch_mirror_s"]["peak_rss_kib"]
    OUT.mkdir(exist_ok=True)
    (OUT / "s3upload.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"S3 upload of {result['files']} files, {total / 2**20:.0f} MiB, to moto on 127.0.0.1 "
          f"(median of {args.repeat})")
    print(f"  ckptwatch mirror     {ours_m:8.2f} s   (peak RSS {rss / 1024:.0f} MiB)")
    print(f"  boto3 upload_file    {theirs_m:8.2f} s")
    print(f"  ratio (boto3 / ours) {ratio:8.2f}x  floor {FLOOR}x: {'met' if ratio >= FLOOR else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
