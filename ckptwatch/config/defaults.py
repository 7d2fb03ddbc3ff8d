"""The ``[service]`` defaults that the quick commands read without building the section.

Why a module of its own: ``ckptwatch latest RUN`` applies four of them (the settle time, the
stale-marker age, the per-file read limits) and its ``--help`` states two, while building
``ServiceConfig`` (its frozen dataclass, the kinds, the table reader) costs ~3 ms of the start-up that
bench/startup.py measures (issue 13). ``ServiceConfig``'s fields take their defaults from here, so each
value is still written once; its docstring says why each is what it is.
"""

from __future__ import annotations

SETTLE_SECONDS = 60.0
STALE_AFTER = 1800.0  # "30m"
MAX_SECONDS_PER_FILE = 5.0
MAX_MEMORY_PER_FILE = 1 << 30  # "1G"
