"""The mirror's hash choice, measured: each candidate hashing a page-cached file against ``cat`` of it.

    python -m bench.hashes              # a 1 GiB file in /tmp, median of 3 per candidate
    python -m bench.hashes --mib 256    # a smoke test

Why this shape: the mirror reads each source file once and hashes it while copying (issue 12), so the
hash must keep up with a read from the page cache, or it becomes what the copy waits on. ``cat FILE >
/dev/null`` of the same warm file is the yardstick (the fastest a tool reads those bytes); each
candidate reads the file through the same page-aligned 4 MiB buffer the mirror uses and hashes it. The
ratio is ``cat`` seconds / candidate seconds: 1.0 means the hash is free next to the read. Candidates:
``xxh3_128`` (python-xxhash, the choice in ``ckptwatch/mirror/hashing.py``), BLAKE3 (when the ``blake3``
package is installed; it is not a dependency), ``sha256`` and ``blake2b`` (hashlib). Results go to
``bench/out/hashes.json``; the machine is shared, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import REPO, loadavg, log
from ckptwatch.formats._stream import CHUNK, AlignedBuffer
from ckptwatch.mirror.hashing import ALGORITHM, new_hasher

OUT = REPO / "bench" / "out"


def _candidates() -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {name: (lambda n=name: new_hasher(n))
                                            for name in ("xxh3_128", "sha256", "blake2b")}
    try:
        import blake3  # type: ignore[import-not-found]

        out["blake3"] = blake3.blake3
    except ImportError:
        pass
    return out


def _hash_file(path: Path, make: Callable[[], object]) -> float:
    h = make()
    fd = os.open(path, os.O_RDONLY)
    started = time.perf_counter()
    try:
        with AlignedBuffer(CHUNK) as buf, buf.view[:buf.size] as view:
            while n := os.readv(fd, [view]):
                with view[:n] as chunk:
                    h.update(chunk)  # type: ignore[attr-defined]
    finally:
        os.close(fd)
    return time.perf_counter() - started


def _cat(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    path = Path("/tmp") / f"ckptwatch-bench-hashes-{os.getpid()}"
    try:
        with open(path, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        _cat(path)  # warm the page cache
        load = loadavg()
        cat = statistics.median(_cat(path) for _ in range(args.repeat))
        rows = {}
        for name, make in _candidates().items():
            _hash_file(path, make)
            seconds = statistics.median(_hash_file(path, make) for _ in range(args.repeat))
            rows[name] = {"seconds": round(seconds, 3), "mb_per_s": round(args.mib * 1.048576 / seconds),
                          "ratio_vs_cat": round(cat / seconds, 2)}
            log(f"hashes: {name:9} {rows[name]['mb_per_s']:>6} MB/s  {rows[name]['ratio_vs_cat']:.2f}x cat")
        fastest = max(rows, key=lambda n: rows[n]["mb_per_s"])
        result = {"mib": args.mib, "repeat": args.repeat, "load": load,
                  "cat": {"seconds": round(cat, 3), "mb_per_s": round(args.mib * 1.048576 / cat)},
                  "candidates": rows, "chosen": ALGORITHM, "fastest": fastest}
        log(f"hashes: cat {result['cat']['mb_per_s']} MB/s; chosen {ALGORITHM}, fastest {fastest}")
        OUT.mkdir(exist_ok=True)
        (OUT / "hashes.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
