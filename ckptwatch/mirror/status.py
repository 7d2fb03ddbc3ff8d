"""Where each complete checkpoint of a run stands on its mirror, from the target's own markers: the
``mirror`` object of ``once --json`` for the runs of a watch with ``[watch.mirror]``.

Cheap on purpose (``once`` must stay a quick look): per checkpoint the commit marker and the manifest
(``manifest.copy_state``: a listing and two small reads; two GETs on S3), plus the lock of a copy under
way. Nothing is copied, hashed or compared with the source: ``committed`` means a committed copy is
there (``ckptwatch verify COPY`` checks its bytes, ``ckptwatch mirror`` whether it still matches the
source). States:

- ``committed``: the marker commits the manifest there.
- ``not_yet``: no copy, or one without its marker (a mirror under way or interrupted; ``reason`` names
  the writer holding its lock when one does).
- ``failed``: the copy is no backup and will not become one by itself (a marker that does not commit
  its manifest), or the target cannot be read (``reason``: what and where).
- ``skipped``: complete but never mirrored, as ``copy.why_not_mirrored`` says (a blocking resume hazard).

Checkpoints that are not complete are not listed: they are not backups yet (their verdicts say why).
"""

from __future__ import annotations

from typing import Any

from ckptwatch.config.mirror import MirrorConfig
from ckptwatch.mirror import manifest as mf
from ckptwatch.mirror.copy import copy_name, why_not_mirrored
from ckptwatch.mirror.lock import MAX_LOCK_BYTES, holder_of
from ckptwatch.mirror.target import Target, join
from ckptwatch.model import RunReport, Status, Verdict


def _error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def checkpoint_status(v: Verdict, run_root: str, target: Target, config: MirrorConfig) -> dict[str, Any]:
    """The status of one complete checkpoint's copy (module docstring); never raises for a fault."""
    prefix = copy_name(run_root, v.path, config.runs_under)
    out = {"path": v.path, "copy": target.describe(prefix), "state": "", "reason": ""}
    why = why_not_mirrored(v, mirror_hazards=config.mirror_hazards)
    if why:
        return {**out, "state": "skipped", "reason": why}
    try:
        state = mf.copy_state(target, prefix)
        if state.state == "committed":
            return {**out, "state": "committed"}
        if state.state == "broken":
            return {**out, "state": "failed", "reason": f"{state.reason}: not a backup (move it aside to "
                    "mirror again)"}
        if state.state == "absent":
            return {**out, "state": "not_yet", "reason": "no copy yet"}
        holder = holder_of(mf.read_small(target, join(prefix, mf.LOCK_NAME), MAX_LOCK_BYTES))
        writer = f"; a mirror is writing it ({holder.describe()})" if holder else ""
        return {**out, "state": "not_yet", "reason": state.reason + writer}
    except (OSError, mf.ManifestError) as exc:
        return {**out, "state": "failed", "reason": f"the target cannot be read ({_error(exc)})"}


def run_status(run: RunReport, config: MirrorConfig) -> dict[str, Any]:
    """``{"to", "checkpoints": [...]}`` for every complete checkpoint of ``run``, newest first."""
    from ckptwatch.mirror.targets import target_for

    complete = [v for v in reversed(run.checkpoints) if v.status is Status.COMPLETE]
    try:
        target = target_for(config.to, endpoint_url=config.endpoint_url)
    except (ValueError, OSError) as exc:
        return {"to": config.to, "checkpoints": [
            {"path": v.path, "copy": None, "state": "failed", "reason": f"{config.to}: {_error(exc)}"}
            for v in complete]}
    return {"to": target.url,
            "checkpoints": [checkpoint_status(v, run.root, target, config) for v in complete]}
