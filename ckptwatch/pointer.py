"""The ``ckptwatch-latest`` resume pointer a launcher can read before it starts the trainer.

Per run root, when ``latest_good = true``: a symlink ``ckptwatch-latest`` to the newest resumable
checkpoint (relative, so the tree can be moved) and ``ckptwatch-latest.json`` with path, step,
layout and time. Both are replaced atomically (temp name + ``rename``), so a reader sees the old or
the new pointer, never half of one. Framework pointers (``latest``, ``last.ckpt``, trackers) are never
touched. Checkpoints that are a set of per-rank files (MindSpore, NVRx) get the JSON only.

Run roots are writable by others and the service may run as root (DESIGN.md invariant 7): every name
written here is created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW`` for the JSON, ``symlink()`` for
the link, both of which fail rather than follow or reuse what is there) under a temp name no one can
predict, then ``os.replace``'d over the final name (a rename replaces a planted link; it never writes
through it). The JSON is read back without following a link and only when it is a small regular file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import time

from ckptwatch.formats._io import open_regular_file

LINK = "ckptwatch-latest"
JSON_NAME = "ckptwatch-latest.json"
MAX_JSON_BYTES = 64 * 1024
LEFTOVER_AGE = 3600.0  # a temp name of ours older than this was left by an interrupted update


def current(run_root: str) -> str | None:
    try:
        with open_regular_file(os.path.join(run_root, JSON_NAME), follow=False) as f:
            value = json.loads(f.read(MAX_JSON_BYTES + 1)[:MAX_JSON_BYTES]).get("path")
        return value if isinstance(value, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def _temp_name(run_root: str, name: str) -> str:
    return os.path.join(run_root, f"{name}.tmp-{os.getpid()}-{secrets.token_hex(8)}")


def _write_exclusive(run_root: str, name: str, data: bytes) -> str:
    """A new file of ours holding ``data`` under an unpredictable temp name beside ``name``; its path."""
    for _ in range(5):
        tmp = _temp_name(run_root, name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # ours: created exclusively above
            raise
        return tmp
    raise OSError(errno.EEXIST, "no free temp name (something keeps creating them)", run_root)


def _symlink_exclusive(run_root: str, name: str, target: str) -> str:
    for _ in range(5):
        tmp = _temp_name(run_root, name)
        try:
            os.symlink(target, tmp)  # fails if the name exists; never follows
        except FileExistsError:
            continue
        return tmp
    raise OSError(errno.EEXIST, "no free temp name (something keeps creating them)", run_root)


def _replace(tmp: str, final: str) -> None:
    try:
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_leftovers(run_root: str, now: float) -> None:
    """Temp names of ours an interrupted update left behind: created by this uid, untouched for an hour.

    Unlinking removes a name, never what a link points to, so a planted link under one of our names is
    harmless to remove; files of other users are left alone.
    """
    prefixes = (JSON_NAME + ".tmp-", LINK + ".tmp-")
    try:
        with os.scandir(run_root) as it:
            names = [e.name for e in it if e.name.startswith(prefixes)]
    except OSError:
        return
    for n in names:
        path = os.path.join(run_root, n)
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if st.st_uid == os.geteuid() and now - st.st_mtime > LEFTOVER_AGE:
                os.unlink(path)


def update(run_root: str, path: str, step: int | None, layout: str, now: float) -> None:
    """Point the run's pointer at ``path``. Raises OSError (the caller logs it and retries later)."""
    doc = {"path": path, "step": step, "layout": layout, "updated": now}
    remove_leftovers(run_root, time.time())
    data = (json.dumps(doc) + "\n").encode("utf-8")
    _replace(_write_exclusive(run_root, JSON_NAME, data), os.path.join(run_root, JSON_NAME))
    if os.path.exists(path):
        tmp_link = _symlink_exclusive(run_root, LINK, os.path.relpath(path, run_root))
        _replace(tmp_link, os.path.join(run_root, LINK))
