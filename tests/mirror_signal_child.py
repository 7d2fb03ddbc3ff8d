"""``python -m tests.mirror_signal_child ARGS``: ``ckptwatch ARGS`` that sends itself SIGTERM (or SIGINT)
in the middle of a copy: just before its ``CKPTWATCH_SIGNAL_AT``-th write into a temp file of the mirror.

Why not a timer in the parent: copying a test checkpoint takes milliseconds, so a signal sent at a time
almost never lands inside the copy (see ``mirror_kill_child``). Here the signal is a real one, delivered
to the process and handled by the command's own handler, while an upload is open (its temp file exists)
and more writes are to come. ``CKPTWATCH_SIGNAL`` names the signal (default SIGTERM).

The write that sent the signal then waits (at most 30 s) until the command's cancel is set, as a write
stuck on a slow network would: without it, the rest of a small test copy may finish before the main thread
runs its handler (a service's loop handles the signal at its next bytecode, on another thread).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

TEMP_MARK = ".ckptwatch-tmp-"  # mirror.target.TEMP_MARK, not imported before the patch is in place


def main() -> int:
    at = int(os.environ["CKPTWATCH_SIGNAL_AT"])
    signum = signal.Signals[os.environ.get("CKPTWATCH_SIGNAL", "SIGTERM")]
    writes = [0]
    write = os.write
    from ckptwatch.mirror import cancel

    cancelled = threading.Event()
    set_cancel = cancel.Cancel.set

    def set_and_tell(self, reason: str) -> None:
        set_cancel(self, reason)
        cancelled.set()

    cancel.Cancel.set = set_and_tell

    def counted(fd, data):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if TEMP_MARK in os.path.basename(name):
            writes[0] += 1
            if writes[0] == at:
                os.kill(os.getpid(), signum)
                if threading.current_thread() is not threading.main_thread():
                    cancelled.wait(30)  # the handler runs on the main thread
        return write(fd, data)

    os.write = counted
    from ckptwatch.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
