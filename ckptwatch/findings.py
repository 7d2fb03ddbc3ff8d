"""The one JSON form of a problem and of a hazard, shared by ``once --json``, the state store and status.

Why one form: a user who reads ``ckptwatch status`` at 3 a.m. must see the same advice that ``once --json``
gives for the same file, so both serialise through these two functions.
"""

from __future__ import annotations

from typing import Any

from ckptwatch.model import Hazard, Problem
from ckptwatch.vocabulary import full_message, severity_of


def problem_json(p: Problem) -> dict[str, Any]:
    return {"kind": p.kind, "file": p.file, "message": full_message(p), "severity": severity_of(p.kind).value}


def hazard_json(h: Hazard) -> dict[str, Any]:
    return {"kind": h.kind, "file": h.file, "message": full_message(h)}
