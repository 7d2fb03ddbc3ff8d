"""The fuzz harness over every format reader: seeds, mutations, targets and the oracle.

Used by ``tests/test_fuzz.py`` (a short budget and the crash corpus, in every test run) and by
``bench/fuzz.py`` (a long budget: ``python -m bench.fuzz --minutes 10``).

- **Seeds** are real files written at run time by the real libraries: ``safetensors.numpy`` and
  ``safetensors.torch`` ``save_file``, ``torch.save`` (zip, legacy, a plain pickle), the stub
  unpickler's usual inputs (``argparse.Namespace`` and an RNG state pickled by ``pickle``), a
  ``torch.distributed.checkpoint`` save (its ``.metadata``), MindSpore files from the protobuf builder of
  ``tests/builders/synthetic.py``, and the JSON side files a Trainer writes.
- **Targets** write the mutated bytes to a real file (a ``.metadata`` beside the real ``.distcp`` shards
  for DCP) and call the reader's public entry point, cheap and deep.
- **The oracle**: a reader returns findings; any exception escaping it is a failure, and so is a call
  that used more than the per-file bounds (5 s of CPU, 1 GiB of memory: ``[service]`` defaults) plus
  slack for the harness's own work.

A failing input is saved as ``tests/fuzz_corpus/<target>/<sha1>.bin``, or under ``pickle/<target>/``
when the exception was raised inside the stub unpickler (``formats/pickle_stub.py``: owned by the
pickle work, reported, not fixed here). Every corpus file is a regression test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
CPU_BOUND = 5.0 + 2.0  # the per-file limit, plus slack for writing the file and the harness
RSS_BOUND = 1 << 30  # growth of the peak RSS over the harness's own, in bytes
MAX_INPUT = 1 << 20  # mutated inputs are cut to this; the corpus stays small


# --------------------------------------------------------------------------------------------------
# Seeds: real files written by the real libraries


def _safetensors_seeds(work: Path) -> list[bytes]:
    import numpy as np
    import torch
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file as save_pt

    out = []
    p = work / "a.safetensors"
    save_np({"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(2, dtype=np.int64)}, str(p),
            metadata={"format": "np"})
    out.append(p.read_bytes())
    save_pt({"emb": torch.randn(4, 3, dtype=torch.bfloat16), "s": torch.tensor(1.5, dtype=torch.float16),
             "e": torch.zeros(0, 2)}, str(p), metadata={"format": "pt"})
    out.append(p.read_bytes())
    return out


def _torch_seeds(work: Path) -> dict[str, list[bytes]]:
    import argparse
    import pickle

    import torch

    state = {"model": {"w": torch.randn(3, 2), "i": torch.arange(4)}, "step": 7,
             "view": torch.zeros(6)[2:4], "lr": 0.1}
    zips, legacy = [], []
    for i, obj in enumerate((state, {"x": torch.ones(2, dtype=torch.float16)})):
        buf = io.BytesIO()
        torch.save(obj, buf)
        zips.append(buf.getvalue())
        p = work / f"legacy{i}.pt"
        torch.save(obj, p, _use_new_zipfile_serialization=False)
        legacy.append(p.read_bytes())
    pickles = [
        pickle.dumps(argparse.Namespace(lr=0.1, steps=10, name="run"), protocol=2),
        pickle.dumps({"python": random.Random(1).getstate(), "epoch": 3}, protocol=4),
    ]
    buf = io.BytesIO()
    torch.save({"epoch": 1, "rng": torch.get_rng_state()[:16]}, buf, _use_new_zipfile_serialization=False)
    pickles.append(buf.getvalue())
    return {"torchzip": zips, "legacy": legacy, "pickle": pickles}


def _dcp_seed(work: Path) -> Path:
    """A real single-process ``torch.distributed.checkpoint`` save; its directory."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    d = work / "dcp_seed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model.w": torch.randn(4, 2), "model.b": torch.zeros(3), "step": 5,
                  "extra": {"note": "x"}}, checkpoint_id=str(d))
    return d


def _mindspore_seeds(work: Path) -> list[bytes]:
    from tests.builders.synthetic import _ms_params, write_mindspore_ckpt

    out = []
    for crc in (False, True):
        p = work / f"ms_{crc}.ckpt"
        write_mindspore_ckpt(p, _ms_params(0, 5)[:6] + _ms_params(0, 5)[-5:], crc=crc)
        out.append(p.read_bytes())
        os.chmod(p, 0o600)
    return out


def _json_seeds() -> list[bytes]:
    state = {"global_step": 20, "epoch": 1.0, "max_steps": 30, "best_model_checkpoint": None,
             "log_history": [{"loss": 2.5 - i / 10, "step": i, "learning_rate": 5e-5} for i in range(1, 6)],
             "is_world_process_zero": True, "num_train_epochs": 2, "trial_params": None}
    index = {"metadata": {"total_size": 1024},
             "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                            "b.weight": "model-00002-of-00002.safetensors"}}
    adapter = {"r": 8, "lora_alpha": 16, "target_modules": ["c_attn"], "peft_type": "LORA"}
    return [json.dumps(x, indent=2).encode() for x in (state, index, adapter)] + [b'{"nan": NaN, "x": -0}']


@dataclass
class Seeds:
    by_target: dict[str, list[bytes]]
    dcp_dir: Path


def build_seeds(work: Path) -> Seeds:
    """Every seed, written by the real libraries into ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    torch_files = _torch_seeds(work)
    dcp_dir = _dcp_seed(work)
    by_target = {
        "safetensors": _safetensors_seeds(work),
        "torchzip": torch_files["torchzip"],
        "legacy": torch_files["legacy"],
        "pickle": torch_files["pickle"],
        "dcp": [(dcp_dir / ".metadata").read_bytes()],
        "mindspore": _mindspore_seeds(work),
        "json": _json_seeds(),
    }
    return Seeds(by_target, dcp_dir)


# --------------------------------------------------------------------------------------------------
# Targets: bytes -> a real file -> the reader's entry points


def _torch_target(path: Path, rng: random.Random) -> None:
    from ckptwatch.formats.torchzip import check_torch_file

    check_torch_file(str(path), read_pickle=rng.random() < 0.5)
    if rng.random() < 0.3:
        check_torch_file(str(path), deep=True)


def _run_file(name: str, suffix: str, call: Callable[[Path, random.Random], None]) -> Callable[..., None]:
    def run(data: bytes, work: Path, rng: random.Random, seeds: Seeds | None = None) -> None:
        work.mkdir(parents=True, exist_ok=True)
        path = work / f"input{suffix}"
        path.write_bytes(data)
        call(path, rng)

    run.__name__ = name
    return run


def _safetensors_call(path: Path, rng: random.Random) -> None:
    from ckptwatch.formats.safetensors import check_safetensors

    check_safetensors(str(path))
    if rng.random() < 0.3:
        check_safetensors(str(path), deep=True, scan_values=True)


def _mindspore_call(path: Path, rng: random.Random) -> None:
    from ckptwatch.formats.mindspore import check_ms_ckpt

    check_ms_ckpt(str(path), deep=rng.random() < 0.3)


def _json_call(path: Path, rng: random.Random) -> None:
    from ckptwatch.formats.jsonfile import read_json

    read_json(str(path))


def _dcp_run(data: bytes, work: Path, rng: random.Random, seeds: Seeds | None = None) -> None:
    from ckptwatch.formats.dcp import check_dcp_dir

    d = work / "dcp"
    if not d.exists():
        if seeds is None:
            raise RuntimeError("the dcp target needs the seed directory")
        shutil.copytree(seeds.dcp_dir, d)
    (d / ".metadata").write_bytes(data)
    check_dcp_dir(str(d), deep=rng.random() < 0.3)


TARGETS: dict[str, Callable[..., None]] = {
    "safetensors": _run_file("safetensors", ".safetensors", _safetensors_call),
    "torchzip": _run_file("torchzip", ".pt", _torch_target),
    "legacy": _run_file("legacy", ".pt", _torch_target),
    "pickle": _run_file("pickle", ".bin", _torch_target),
    "dcp": _dcp_run,
    "mindspore": _run_file("mindspore", ".ckpt", _mindspore_call),
    "json": _run_file("json", ".json", _json_call),
}


# --------------------------------------------------------------------------------------------------
# Mutations


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1,
                (1 << 64) - 1, 100_000_000, 1 << 40]
_TOKENS = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"-0", b"9" * 5000, b"[" * 5000, b"NaN", b"\\ud800",
           b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x01\x02", b"PK\x03\x04", b"\x80\x02", b".",
           b"\x8a\xff" + b"\x01" * 255, b"\x8b\x10\x27\x00\x00" + b"\x01" * 10000, b"(" * 1000, b"]" * 2000,
           b"crc_num", b"\x0a\xff\xff\xff\xff\x0f"]


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """A few random edits (one most often: more rarely survive the first check): bit flips, interesting
    integers, tokens, cuts, splices, repeats."""
    b = bytearray(data)
    for _ in range(min(8, 1 + int(rng.expovariate(1.0)))):
        op = rng.randrange(9)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif op == 2:
            v = rng.choice(_INTERESTING)
            width = rng.choice((1, 2, 4, 8))
            b[pos:pos + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        elif op == 3:
            b[pos:pos] = rng.choice(_TOKENS)
        elif op == 4 and b:
            end = rng.randrange(pos, len(b) + 1)
            del b[pos:end]
        elif op == 5:
            del b[pos:]
        elif op == 6 and others:
            o = rng.choice(others)
            s = rng.randrange(len(o) + 1)
            b[pos:pos] = o[s:s + rng.randrange(1, 4096)]
        elif op == 7 and b:
            s = rng.randrange(len(b))
            piece = bytes(b[s:s + rng.randrange(1, 64)])
            b[pos:pos] = piece * rng.randrange(2, 200)
        elif op == 8 and len(b) >= 8:
            i = rng.randrange(len(b) - 7)
            struct.pack_into("<Q", b, i, rng.choice(_INTERESTING))
    return bytes(b[:MAX_INPUT])


# --------------------------------------------------------------------------------------------------
# The oracle


@dataclass
class Failure:
    target: str
    data: bytes
    why: str
    in_pickle: bool

    def folder(self) -> Path:
        return CORPUS / "pickle" / self.target if self.in_pickle else CORPUS / self.target


def _in_pickle_stub(exc: BaseException) -> bool:
    """True when the innermost frame of ours that raised is the stub unpickler."""
    ours = [f for f in traceback.extract_tb(exc.__traceback__) if "/ckptwatch/" in f.filename]
    return bool(ours) and ours[-1].filename.endswith("pickle_stub.py")


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Hung(BaseException):
    """Raised by the alarm in a reader past ``hang_after`` (not an Exception: readers catch those)."""


def _hung(signum: int, frame: object) -> None:
    raise _Hung


def check_one(target: str, data: bytes, work: Path, rng: random.Random,
              seeds: Seeds | None = None, hang_after: float = 0) -> Failure | None:
    """Run one input through ``target``; the failure, if the reader let an exception out or broke a bound.

    Memory: the process's peak RSS after the call against its current RSS before it. The peak only
    moves up, so a call that stayed under the earlier peak passes unexamined, and that earlier peak was
    itself examined when it was set.
    """
    base = _rss()
    start = time.thread_time()
    if hang_after:  # a reader stuck in a loop that never ticks would stop the fuzzer: interrupt it
        signal.signal(signal.SIGALRM, _hung)
        signal.setitimer(signal.ITIMER_REAL, hang_after)
    try:
        TARGETS[target](data, work, rng, seeds)
    except Exception as exc:  # noqa: BLE001 - the oracle: anything escaping a reader is the finding
        why = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:300]
        return Failure(target, data, f"{why}\n{traceback.format_exc()[-2000:]}", _in_pickle_stub(exc))
    except _Hung as exc:
        trace = traceback.format_exc()[-2000:]
        return Failure(target, data, f"still running after {hang_after:g} s\n{trace}", _in_pickle_stub(exc))
    finally:
        if hang_after:
            signal.setitimer(signal.ITIMER_REAL, 0)
    cpu = time.thread_time() - start
    if cpu > CPU_BOUND:
        return Failure(target, data, f"took {cpu:.1f} s of CPU (bound {CPU_BOUND:g} s)", False)
    grown = _maxrss() - base
    if grown > RSS_BOUND:
        return Failure(target, data, f"grew the peak RSS by {grown >> 20} MiB (bound {RSS_BOUND >> 20} MiB)",
                       False)
    return None


def save_failure(f: Failure) -> Path:
    """Keep the input in the corpus (small files only: inputs are cut to 1 MiB) with its reason beside it."""
    folder = f.folder()
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(f.data).hexdigest()[:16]
    path = folder / f"{digest}.bin"
    path.write_bytes(f.data)
    (folder / f"{digest}.txt").write_text(f.why.splitlines()[0] + "\n")
    return path


def corpus_files() -> list[tuple[str, Path, bool]]:
    """(target, file, owned by the pickle work) for every saved crash."""
    out = []
    for folder, in_pickle in ((CORPUS, False), (CORPUS / "pickle", True)):
        if not folder.is_dir():
            continue
        for target_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name in TARGETS):
            out += [(target_dir.name, f, in_pickle) for f in sorted(target_dir.glob("*.bin"))]
    return out


def fuzz(seeds: Seeds, work: Path, *, seconds: float, rng: random.Random,
         targets: list[str] | None = None, on_failure: Callable[[Failure], None] | None = None,
         on_progress: Callable[[dict[str, int]], None] | None = None, hang_after: float = 0) -> list[Failure]:
    """Mutate the seeds of each target in turn for ``seconds`` in all; the failures found.

    ``hang_after`` (main thread only): interrupt an input still running after this many seconds.
    """
    names = targets or list(TARGETS)
    everything = [s for v in seeds.by_target.values() for s in v]
    failures: list[Failure] = []
    counts = dict.fromkeys(names, 0)
    for name in names:
        (work / name).mkdir(parents=True, exist_ok=True)
    end = time.monotonic() + seconds
    last_report = time.monotonic()
    while time.monotonic() < end:
        for name in names:
            seed = rng.choice(seeds.by_target[name])
            data = mutate(seed, rng, everything)
            f = check_one(name, data, work / name, rng, seeds, hang_after)
            counts[name] += 1
            if f is not None:
                failures.append(f)
                if on_failure:
                    on_failure(f)
        if on_progress and time.monotonic() - last_report > 30:
            on_progress(counts)
            last_report = time.monotonic()
    if on_progress:
        on_progress(counts)
    return failures
