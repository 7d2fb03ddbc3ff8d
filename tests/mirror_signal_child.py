"""``python -m tests.mirror_signal_child ARGS``: ``ckptwatch ARGS`` that sends itself SIGTERM (or SIGINT)
in the middle of a copy: just before its ``CKPTWATCH_SIGNAL_AT``-th write into a temp file of the mirror.

Why not a timer in the parent: copying a test checkpoint takes milliseconds, so a signal sent at a time
almost never lands inside the copy (see ``mirror_kill_child``). Here the signal is a real one, delivered
to the process and handled by the command's own handler, while an upload is open (its temp file exists)
and more writes are to come. ``CKPTWATCH_SIGNAL`` names the signal (default SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys

TEMP_MARK = ".ckptwatch-tmp-"  # mirror.target.TEMP_MARK, not imported before the patch is in place


def main() -> int:
    at = int(os.environ["CKPTWATCH_SIGNAL_AT"])
    signum = signal.Signals[os.environ.get("CKPTWATCH_SIGNAL", "SIGTERM")]
    writes = [0]
    write = os.write

    def counted(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if TEMP_MARK in os.path.basename(name):
            writes[0] += 1
            if writes[0] == at:
                os.kill(os.getpid(), signum)
        return write(fd, data)

    os.write = counted
    from ckptwatch.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
