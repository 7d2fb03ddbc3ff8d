"""Retention: keep what matters, delete the rest, never lose a checkpoint that matters.

Modules, one job each (DESIGN.md): ``model`` (the plan's types: Candidate, Decision, Plan, below the two
pure modules that use them), ``policy`` (pure: the keep rules and the plan, one decision with its
reasons per checkpoint), ``guards`` (pure: the invariants no plan may break), ``facts`` (reads what the
rules need from a run: metrics, pins, framework pointers, the best checkpoint), ``delete`` (the one
guarded deletion path: re-check on disk, rename into the trash, record, remove), ``service`` (the sink).
"""
