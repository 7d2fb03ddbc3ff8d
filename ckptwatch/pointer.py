"""The ``ckptwatch-latest`` resume pointer a launcher can read before it starts the trainer.

Per run root, when ``latest_good = true``: a symlink ``ckptwatch-latest`` to the newest resumable
checkpoint (relative, so the tree can be moved) and ``ckptwatch-latest.json`` with path, step,
layout and time. Both are replaced atomically (temp name + ``rename``), so a reader sees the old or
the new pointer, never half of one. Framework pointers (``latest``, ``last.ckpt``, trackers) are never
touched. Checkpoints that are a set of per-rank files (MindSpore, NVRx) get the JSON only.
"""

from __future__ import annotations

import json
import os

from ckptwatch.formats.jsonfile import read_json

LINK = "ckptwatch-latest"
JSON_NAME = "ckptwatch-latest.json"


def current(run_root: str) -> str | None:
    doc, problem = read_json(os.path.join(run_root, JSON_NAME))  # bounded: the root is writable by others
    value = doc.get("path") if problem is None and isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def update(run_root: str, path: str, step: int | None, layout: str, now: float) -> None:
    """Point the run's pointer at ``path``. Raises OSError (the caller logs it and retries later)."""
    suffix = f".tmp-{os.getpid()}"
    doc = {"path": path, "step": step, "layout": layout, "updated": now}
    tmp_json = os.path.join(run_root, JSON_NAME + suffix)
    with open(tmp_json, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_json, os.path.join(run_root, JSON_NAME))
    if os.path.exists(path):
        tmp_link = os.path.join(run_root, LINK + suffix)
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)  # our own temp name from an earlier, interrupted update
        os.symlink(os.path.relpath(path, run_root), tmp_link)
        os.replace(tmp_link, os.path.join(run_root, LINK))
