"""``python -m tests.mirror_pause_child ARGS``: ``ckptwatch ARGS`` that stops at its first ``os.write``.

Why: to have one real ``ckptwatch mirror`` process hold a copy's lock, mid-copy, while another runs. The
first ``os.write`` of a mirror is the first chunk of the first data file of the newest checkpoint, which
``copy.mirror_checkpoint`` writes only while holding that copy's lock. There the process writes its pid
to ``CKPTWATCH_PAUSED_FILE`` and waits until ``CKPTWATCH_RESUME_FILE`` exists (a parent may also kill it).
"""

from __future__ import annotations

import os
import sys
import time

WAIT_LIMIT = 300.0  # a parent that died never resumes us: give up rather than linger


def main() -> int:
    paused, resume = os.environ["CKPTWATCH_PAUSED_FILE"], os.environ["CKPTWATCH_RESUME_FILE"]
    real_write = os.write
    state = {"done": False}

    def write(fd, data):
        if not state["done"]:
            state["done"] = True
            with open(paused, "w") as f:
                f.write(str(os.getpid()))
            deadline = time.monotonic() + WAIT_LIMIT
            while not os.path.exists(resume) and time.monotonic() < deadline:
                time.sleep(0.02)
        return real_write(fd, data)

    os.write = write
    from ckptwatch.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
