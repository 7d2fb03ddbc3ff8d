"""The long fuzz run over every format reader (``tests/fuzzing.py`` holds the targets and the oracle).

    python -m bench.fuzz --minutes 10                  # the plain mutation fuzzer, every target
    python -m bench.fuzz --minutes 10 --engine atheris # coverage-guided (libFuzzer through atheris)
    python -m bench.fuzz --minutes 2 --target json --target dcp --seed 7

Run it from the repo root (``nice -n 19`` on a shared machine). Seeds are written by the real libraries
at start-up into ``--workdir``. Every failure (an exception escaping a reader, or more than 5 s of CPU
or 1 GiB of memory for one file) is saved into ``tests/fuzz_corpus/`` (``pickle/`` when it was raised
inside the stub unpickler) and so becomes a regression test of ``tests/test_fuzz.py``. Exit status: 0
when nothing failed, 1 otherwise.

The atheris engine feeds libFuzzer's inputs as ``[target byte][file bytes]`` with the seeds as its
starting corpus; the process ends when libFuzzer does (its exit status), so look for the ``FAIL``
lines, printed as failures are found. The plain engine needs nothing beyond the project's venv.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from pathlib import Path

from tests import fuzzing


def _report(f: fuzzing.Failure) -> None:
    path = fuzzing.save_failure(f)
    owner = " (pickle stub: owned by the pickle work)" if f.in_pickle else ""
    print(f"FAIL {f.target}{owner}: {f.why.splitlines()[0]} -> {path}", flush=True)


def _plain(seeds: fuzzing.Seeds, work: Path, args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    start = time.monotonic()

    def progress(counts: dict[str, int]) -> None:
        total = sum(counts.values())
        print(f"{time.monotonic() - start:6.0f} s  {total} inputs  " +
              " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)

    failures = fuzzing.fuzz(seeds, work, seconds=args.minutes * 60, rng=rng, targets=args.target,
                            on_failure=_report, on_progress=progress, hang_after=60)
    return len(failures)


def _atheris(seeds: fuzzing.Seeds, work: Path, args: argparse.Namespace) -> int:
    import atheris

    with atheris.instrument_imports():  # the readers, instrumented for coverage before anything imports them
        for module in ("dcp", "jsonfile", "mindspore", "safetensors", "torchzip", "pickle_stub"):
            importlib.import_module(f"ckptwatch.formats.{module}")
    names = args.target or list(fuzzing.TARGETS)
    corpus = work / "atheris-corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (work / name).mkdir(parents=True, exist_ok=True)
        for j, seed in enumerate(seeds.by_target[name]):
            (corpus / f"{name}-{j}").write_bytes(bytes([i]) + seed)
    rng = random.Random(args.seed)
    found = [0]

    def one(data: bytes) -> None:
        if not data:
            return
        name = names[data[0] % len(names)]
        f = fuzzing.check_one(name, data[1:], work / name, rng, seeds)
        if f is not None:
            found[0] += 1
            _report(f)

    argv = [sys.argv[0], str(corpus), f"-max_total_time={int(args.minutes * 60)}", "-timeout=60",
            f"-max_len={fuzzing.MAX_INPUT}", "-rss_limit_mb=4096", f"-seed={args.seed}"]
    atheris.Setup(argv, one)
    try:
        atheris.Fuzz()
    except SystemExit:
        pass
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--engine", choices=("plain", "atheris"), default="plain")
    parser.add_argument("--target", action="append", choices=sorted(fuzzing.TARGETS),
                        help="fuzz only this target (repeatable); default: all")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ckptwatch-fuzz"))
    args = parser.parse_args(argv)
    print(f"seed {args.seed}, {args.minutes:g} min, engine {args.engine}", flush=True)
    seeds = fuzzing.build_seeds(args.workdir / "seeds")
    runner = _atheris if args.engine == "atheris" else _plain
    failures = runner(seeds, args.workdir / args.engine, args)
    print(f"{failures} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
