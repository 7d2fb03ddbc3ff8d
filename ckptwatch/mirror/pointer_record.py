"""The run's pointer record on a target (``<to>/<run>/.ckptwatch-mirror-pointers.json``): its format, read
and written through a target. What goes in it and when: ``mirror.pointers``; who reads it back:
``restore.restore_run``. Like a manifest it is untrusted when read: paths are checked, sizes bounded,
and every fault is a ``ManifestError`` naming the record.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.hashing import known
from ckptwatch.mirror.target import Target, join

RECORD_NAME = mf.PREFIX + "-pointers.json"
VERSION = 1
MAX_RECORD_BYTES = 8 << 20


@dataclass(frozen=True)
class Entry:
    """A recorded pointer: its bytes, and the copy (its dir name under ``<to>/<run>/``) it names."""

    copy: str
    data: bytes
    algorithm: str
    hash: str
    mtime_ns: int

    def as_json(self) -> dict[str, Any]:
        return {"copy": self.copy, "data": base64.b64encode(self.data).decode("ascii"),
                "algorithm": self.algorithm, "hash": self.hash, "mtime_ns": self.mtime_ns}


def read_record(target: Target, run_prefix: str) -> dict[str, Entry]:
    """The run's recorded pointers (path in the run -> entry); ``{}`` when there is none.
    ``ManifestError`` when the record is there but is not one ckptwatch wrote."""
    name = join(run_prefix, RECORD_NAME)
    data = mf.read_small(target, name, MAX_RECORD_BYTES)
    if data is None:
        return {}
    where = target.describe(name)
    try:
        doc = json.loads(data)
        if doc.get("version") != VERSION:
            raise mf.ManifestError(f"{where}: pointer record version {doc.get('version')!r}; this ckptwatch "
                                   f"reads version {VERSION}")
        out = {}
        for rel, e in doc["pointers"].items():
            mf.member_path(rel, where)
            mf.member_path(e["copy"], where)
            raw = base64.b64decode(e["data"], validate=True)
            if not known(e["algorithm"]) or not isinstance(e["hash"], str) or type(e["mtime_ns"]) is not int:
                raise ValueError(f"the entry of {rel} is incomplete")
            out[rel] = Entry(e["copy"], raw, e["algorithm"], e["hash"], e["mtime_ns"])
        return out
    except mf.ManifestError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise mf.ManifestError(f"{where}: not a pointer record of ckptwatch ({exc})") from None


def record_bytes(entries: dict[str, Entry]) -> bytes:
    doc = {"version": VERSION, "pointers": {rel: e.as_json() for rel, e in sorted(entries.items())}}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("ascii")
