"""Mirror, restore and S3 upload of a 4 GiB checkpoint, each against the standard tool (issue 12).

    python -m bench.mirror                   # 4 GiB in 12 files: local, restore, s3 (about 10 minutes)
    python -m bench.mirror --only local      # local | restore | s3 (repeatable)
    python -m bench.mirror --quick           # 256 MiB, a smoke test
    python -m bench.mirror --gib 2 --files 8 --repeat 5 --parallel 2

The checkpoint is the bench's real 20-file Trainer template (``bench.common.hf_template``) plus
``--files`` safetensors files of random bytes (``extra_state/shard-NN.safetensors``: a valid header of 4
BF16 tensors, then the data), ``--gib`` GiB in all, dated an hour back, written once, ``sync``'d and
read once so every measurement starts from a warm source with no dirty pages. All work is in
``--workdir`` (default ``/tmp/ckptwatch-bench/mirror``: ext4 on the virtio disk, perf-baselines section 1)
and is deleted at the end.

- **local**: ``python -m ckptwatch mirror RUN --to DST --settle 0`` (whole process: judging the run,
  reading every file once, xxh3_128 while copying, fsync of every file and directory, the size check,
  manifest and marker) against ``cp -r SRC DST && find DST -exec sync -- {} +``: coreutils ``sync FILE``
  fsyncs each file and directory of the copy, the same durability ckptwatch gives its copy (a global
  ``sync`` would also flush other processes' data). Peak RSS of the mirror process from ``wait4``.
- **restore**: ``python -m ckptwatch restore COPY DEST`` (every file read once, hashed and compared
  with the manifest, written, fsync'd, renamed into place) against a separate hash pass then the copy:
  ``xxhsum -H2`` over COPY's files when ``xxhsum`` is installed, else a Python xxh3_128 pass over mmap
  slices (the fastest hash pass measured, perf-baselines section 4), then ``cp -r COPY DEST`` and the
  same ``sync`` of every file.
- **s3**: ``bench.s3upload.measure_s3`` on the same checkpoint: ``ckptwatch mirror`` to
  ``s3://bench/...`` against boto3 ``upload_file`` of the same files, both to one moto server on
  127.0.0.1.

Before each timed run the destination is removed, ``sync`` runs and the disk is given ``SETTLE_S``
seconds (not timed), so no run pays for the previous one's writeback. Sides alternate (ours first in
even runs, the yardstick first in odd ones), one warm-up each, then the median of ``--repeat``. The
ratio is yardstick / ours (1.0: as fast as the tool). The 1-minute load average is recorded before and
after each part: the machine is a shared 2-vCPU VM, so compare ratios from one run. Results go to
``bench/out/mirror.json``.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import struct
import sys
import time
from pathlib import Path

from bench.common import OLD, PY, REPO, hf_template, loadavg, log, run_once

OUT = REPO / "bench" / "out"
FLOORS = {"local": 0.8, "restore": 0.8, "s3": 0.8}
GOAL_LOCAL = 0.9
RSS_LIMIT = 200e6  # bytes, during the local mirror
SYNC_ALL = 'find "$1" -exec sync -- {} +'  # fsync every file and directory below $1 (coreutils sync)


def safetensors_like(path: Path, size: int, tensors: int = 4) -> None:
    """A valid safetensors file of about ``size`` bytes: a header of ``tensors`` BF16 tensors, random data."""
    per = max(2, size // tensors // 2 * 2)
    header: dict = {"__metadata__": {"format": "pt"}}
    for i in range(tensors):
        header[f"layer.{i}.weight"] = {"dtype": "BF16", "shape": [per // 2],
                                       "data_offsets": [i * per, (i + 1) * per]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = per * tensors
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n


def build(work: Path, total: int, files: int) -> Path:
    """``work/src/run/checkpoint-2``: the Trainer template plus ``files`` safetensors files, synced, warm."""
    run = work / "src" / "run"
    shutil.rmtree(work / "src", ignore_errors=True)
    ckpt = run / "checkpoint-2"
    shutil.copytree(hf_template(work.parent), ckpt)
    extra = ckpt / "extra_state"
    extra.mkdir()
    for i in range(files):
        safetensors_like(extra / f"shard-{i:02d}-of-{files:02d}.safetensors", total // files)
    old = time.time() - OLD
    for p in [*ckpt.rglob("*"), ckpt, run]:
        os.utime(p, (old, old))
    os.sync()
    warm(ckpt)
    return run


def warm(tree: Path) -> None:
    """Read every file of ``tree`` once (into the page cache)."""
    for p in sorted(tree.rglob("*")):
        if p.is_file():
            with open(p, "rb", buffering=0) as f:
                while f.read(8 << 20):
                    pass


def listing(tree: Path) -> dict[str, int]:
    return {str(p.relative_to(tree)): p.stat().st_size for p in tree.rglob("*") if p.is_file()}


def hash_child(root: str) -> None:
    """The yardstick's hash pass: xxh3_128 of every file below ``root`` over 64 MiB mmap slices."""
    import xxhash

    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            with open(os.path.join(dirpath, name), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                h = xxhash.xxh3_128()
                if size:
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m, memoryview(m) as v:
                        for off in range(0, size, 64 << 20):
                            with v[off:off + (64 << 20)] as piece:
                                h.update(piece)
                print(h.hexdigest(), os.path.join(dirpath, name))


SETTLE_S = 5.0  # after removing the previous run's 4 GiB: see _fresh


def _fresh(path: Path) -> None:
    """Remove ``path`` and let the disk settle: the previous run's writeback is not this run's cost.

    ``sync`` alone was not enough: in a run of 5 pairs, ckptwatch was 20-60 % slower each time it ran
    right after the yardstick than when it ran after itself (probably the disk still busy below the
    guest: ext4's ``discard`` of the 4 GiB just deleted, or the VM host writing them back), so each run
    also waits ``SETTLE_S`` first (not timed)."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()
    time.sleep(SETTLE_S)


def _stats(runs: list[float]) -> dict:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def _pairs(name: str, repeat: int, ours: tuple, theirs: tuple) -> dict:
    """Run ``(label, prepare, argv, check)`` pairs alternately; one warm-up each, then ``repeat`` timed."""
    walls: dict[str, list[float]] = {ours[0]: [], theirs[0]: []}
    rss: list[int] = []
    load = [loadavg()]
    for i in range(repeat + 1):
        for label, prepare, argv, check in (ours, theirs) if i % 2 == 0 else (theirs, ours):
            prepare()
            wall, peak, code = run_once(argv)
            if code != 0:
                raise RuntimeError(f"{name}: {label} exited {code}: {' '.join(argv)}")
            check()
            if i:
                walls[label].append(wall)
                if label == ours[0]:
                    rss.append(peak)
            log(f"{name}: run {i}{' (warm-up)' if not i else ''}: {label} {wall:.2f} s")
    load.append(loadavg())
    o, t = _stats(walls[ours[0]]), _stats(walls[theirs[0]])
    ratio = t["median"] / o["median"]
    return {"ours": {"label": ours[0], **o, "peak_rss_kib": max(rss), "argv": " ".join(ours[2])},
            "yardstick": {"label": theirs[0], **t, "argv": " ".join(theirs[2])},
            "ratio": ratio, "floor": FLOORS[name], "met": ratio >= FLOORS[name], "loadavg": load}


def bench_local(run: Path, work: Path, repeat: int, parallel: int | None) -> dict:
    src = run / "checkpoint-2"
    want = listing(src)
    dst = work / "dst"

    def check_ours() -> None:
        got = listing(dst / "run" / "checkpoint-2")
        if any(got.get(k) != v for k, v in want.items()):
            raise RuntimeError("local: the mirror's copy lacks files or has other sizes")

    def prep_cp() -> None:
        _fresh(dst)
        (dst / "run").mkdir(parents=True)

    def check_cp() -> None:
        if listing(dst / "run" / "checkpoint-2") != want:
            raise RuntimeError("local: cp -r's copy differs")

    mirror = [PY, "-m", "ckptwatch", "mirror", str(run), "--to", str(dst), "--settle", "0",
              *(["--parallel", str(parallel)] if parallel else [])]
    cp = ["sh", "-c", f'cp -r "$1" "$2" && {SYNC_ALL.replace("$1", "$2")}', "sh", str(src),
          str(dst / "run" / "checkpoint-2")]
    res = _pairs("local", repeat, ("ckptwatch mirror", lambda: _fresh(dst), mirror, check_ours),
                 ("cp -r + sync", prep_cp, cp, check_cp))
    res["goal"] = GOAL_LOCAL
    rss = res["ours"]["peak_rss_kib"] * 1024
    res["rss"] = {"peak_bytes": rss, "limit": RSS_LIMIT, "met": rss < RSS_LIMIT}
    _fresh(dst)
    return res


def bench_restore(run: Path, work: Path, repeat: int) -> dict:
    copies = work / "copies"
    _fresh(copies)
    r = run_once([PY, "-m", "ckptwatch", "mirror", str(run), "--to", str(copies), "--settle", "0"])
    if r[2] != 0:
        raise RuntimeError(f"restore: making the copy failed ({r[2]})")
    copy = copies / "run" / "checkpoint-2"
    warm(copy)
    want = listing(run / "checkpoint-2")
    dest = work / "restored"

    def check_ours() -> None:
        got = listing(dest)
        if got != want:
            raise RuntimeError("restore: the restored checkpoint differs from the source")

    def check_cp() -> None:
        if listing(dest) != listing(copy):
            raise RuntimeError("restore: cp -r's copy differs")

    hasher = ('find "$1" -type f -exec xxhsum -H2 {} + >/dev/null' if shutil.which("xxhsum")
              else f'"{PY}" -m bench.mirror --hash-child "$1" >/dev/null')
    restore = [PY, "-m", "ckptwatch", "restore", str(copy), str(dest)]
    yard = ["sh", "-c", f'{hasher} && cp -r "$1" "$2" && {SYNC_ALL.replace("$1", "$2")}', "sh", str(copy),
            str(dest)]
    res = _pairs("restore", repeat, ("ckptwatch restore", lambda: _fresh(dest), restore, check_ours),
                 ("hash pass + cp -r + sync", lambda: _fresh(dest), yard, check_cp))
    res["hash_pass"] = "xxhsum -H2" if shutil.which("xxhsum") else "python xxh3_128 over mmap"
    _fresh(dest)
    _fresh(copies)
    return res


def bench_s3(run: Path, work: Path, repeat: int, parallel: int | None) -> dict:
    from bench.s3upload import measure_s3

    res = measure_s3(run, work, repeat, parallel)
    return {"ours": {"label": "ckptwatch mirror to s3", **res["ckptwatch_mirror_s"]},
            "yardstick": {"label": "boto3 upload_file", **res["boto3_upload_file_s"]},
            "ratio": res["ratio"], "floor": FLOORS["s3"], "met": res["met"], "loadavg": res["loadavg"]}


def table(results: dict, total: int, files: int) -> list[str]:
    lines = [f"{total / 2**30:.2f} GiB checkpoint, {files} files; median of the timed runs; "
             "ratio = yardstick / ours"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"  {name:8s} ERROR {r['error']}")
            continue
        o, t = r["ours"], r["yardstick"]
        lines.append(f"  {name:8s} {o['label']:24s} {o['median']:7.2f} s   {t['label']:26s} "
                     f"{t['median']:7.2f} s   {r['ratio']:.2f}x  floor {r['floor']}x "
                     f"{'met' if r['met'] else 'NOT met'}   "
                     f"load {r['loadavg'][0][0]:.2f}->{r['loadavg'][-1][0]:.2f}")
        if "rss" in r:
            lines.append(f"  {'':8s} peak RSS of the mirror {r['rss']['peak_bytes'] / 1e6:.0f} MB "
                         f"(limit 200 MB): {'met' if r['rss']['met'] else 'NOT met'}")
        else:
            lines.append(f"  {'':8s} peak RSS of {o['label']} {o['peak_rss_kib'] * 1024 / 1e6:.0f} MB")
    return lines


def run_all(which: list[str], gib: float, files: int, repeat: int, parallel: int | None, workdir: Path,
            keep: bool = False) -> dict:
    work = workdir / "mirror"
    work.mkdir(parents=True, exist_ok=True)
    total = int(gib * 2**30)
    free = shutil.disk_usage(work).free
    need = total * 3 + (1 << 30)
    if free < need:
        raise RuntimeError(f"only {free / 2**30:.1f} GiB free in {work}; the mirror bench needs "
                           f"{need / 2**30:.1f} GiB (source, copy, restored copy)")
    results: dict = {}
    try:
        log(f"mirror: writing a {gib:g} GiB checkpoint of {files} safetensors files in {work}")
        run = build(work, total, files)
        have = listing(run / "checkpoint-2")
        size, count = sum(have.values()), len(have)
        for name in which:
            try:
                if name == "local":
                    results[name] = bench_local(run, work, repeat, parallel)
                elif name == "restore":
                    results[name] = bench_restore(run, work, repeat)
                else:
                    results[name] = bench_s3(run, work, repeat, parallel)
            except Exception as exc:  # noqa: BLE001 - one failing part must not lose the others' numbers
                log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"bytes": size, "files": count, "big_files": files, "results": results,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mirror", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--only", action="append", choices=("local", "restore", "s3"),
                    help="run only this part (repeatable); default: all three")
    ap.add_argument("--gib", type=float, default=4.0, help="GiB of safetensors data (default 4)")
    ap.add_argument("--files", type=int, default=12, help="how many safetensors files (default 12)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per side after 1 warm-up (default 3)")
    ap.add_argument("--parallel", type=int, default=None,
                    help="ckptwatch mirror --parallel (default: the config's)")
    ap.add_argument("--quick", action="store_true", help="0.25 GiB: a smoke test")
    ap.add_argument("--workdir", default="/tmp/ckptwatch-bench")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--hash-child", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hash_child:
        hash_child(args.hash_child)
        return 0
    gib = 0.25 if args.quick else args.gib
    doc = run_all(args.only or ["local", "restore", "s3"], gib, args.files, args.repeat, args.parallel,
                  Path(args.workdir), args.keep)
    OUT.mkdir(exist_ok=True)
    (OUT / "mirror.json").write_text(json.dumps(doc, indent=2) + "\n")
    print("\n".join(table(doc["results"], doc["bytes"], doc["files"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
