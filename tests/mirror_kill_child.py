"""``python -m tests.mirror_kill_child ARGS``: ``ckptwatch ARGS`` that SIGKILLs itself at its Nth I/O call.

Why not a timer in the parent: copying a test checkpoint takes about 25 ms of a 0.5 s process (the rest
is interpreter start-up and judging), so kills at random *times* almost never land inside the copy. Here
every write, fsync, rename, unlink, utime and mkdir the process makes is counted, and before the call
numbered ``CKPTWATCH_KILL_AT`` the process sends itself SIGKILL: a real kill -9 (no handler, no cleanup,
no flush) at a chosen point of the copy. ``CKPTWATCH_KILL_AT=0`` kills never; with
``CKPTWATCH_COUNT_FILE`` set, the number of calls made is written there at exit.

``CKPTWATCH_KILL_ON=s3`` counts the HTTP requests to the S3 endpoint instead (aiobotocore's
``AioEndpoint._send``, under s3fs: every list, head, put, multipart part, complete and delete), so a
kill lands between two requests of an upload: after some parts of a multipart upload went up, between
an object and the manifest, between the manifest and the commit marker.
"""

from __future__ import annotations

import os
import signal
import sys

COUNTED = ("write", "fsync", "replace", "rename", "unlink", "utime", "mkdir")


def main() -> int:
    at = int(os.environ.get("CKPTWATCH_KILL_AT", "0"))
    calls = [0]

    def counted(fn):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return call

    if os.environ.get("CKPTWATCH_KILL_ON") == "s3":
        from aiobotocore.endpoint import AioEndpoint

        send = AioEndpoint._send

        async def counted_send(self, request):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return await send(self, request)

        AioEndpoint._send = counted_send
    else:
        for name in COUNTED:
            setattr(os, name, counted(getattr(os, name)))
    from ckptwatch.cli import main as cli

    code = cli(sys.argv[1:])
    count_file = os.environ.get("CKPTWATCH_COUNT_FILE")
    if count_file:
        with open(count_file, "w") as f:
            f.write(str(calls[0]))
    return code


if __name__ == "__main__":
    sys.exit(main())
