"""Alert kinds and severities: the vocabulary routes are written in.

Why a closed list: a route key that names no kind (``[alerts.routes] loss_jumps = ...``) would
silently route nothing, and nobody finds out until the night it mattered. Config validates route keys
against ``KINDS`` and ``SEVERITIES``; the two sets are disjoint, so one ``[alerts.routes]`` table can
hold both kinds of key. Add kinds, never rename them (they are config keys).
"""

from __future__ import annotations

ERROR = "error"
WARNING = "warning"
SEVERITIES: tuple[str, ...] = (ERROR, WARNING)

# kind -> default severity. "error": something is lost or about to be (a checkpoint you cannot resume
# from, a run that resumed wrongly, a backup that failed, the watchdog itself failing). "warning":
# something needs a look soon but nothing is lost yet.
KIND_SEVERITY: dict[str, str] = {
    "incomplete": ERROR,
    "corrupt": ERROR,
    "resume_hazard": WARNING,
    "loss_jump": ERROR,
    "stalled": WARNING,
    "mirror_failed": ERROR,
    "disk_low": WARNING,
    "retention_blocked": WARNING,
    "service_error": ERROR,
}
KINDS: tuple[str, ...] = tuple(KIND_SEVERITY)
# Kinds whose feature is not built yet: config refuses a route for them (a route that can never fire is
# a promise ckptwatch does not keep). Remove a kind from here in the change that starts raising it.
NOT_RAISED_YET: dict[str, str] = {}

assert not set(KINDS) & set(SEVERITIES), "route keys must be unambiguous"
