"""``ckptwatch alert test``: send a test message to every configured channel and say which arrived.

Why not through the dispatcher: this is a diagnosis, so it must be direct and synchronous (one attempt
per URL, the configured timeout, the answer on stdout), and it must not touch the ledger or be held by
the rate limit. URLs are printed masked, as everywhere.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import TextIO

from ckptwatch.alerts import messages
from ckptwatch.alerts.config import AlertsConfig, mask_url
from ckptwatch.alerts.sender import AppriseSender, Sender
from ckptwatch.errors import EXIT_OK, EXIT_PROBLEMS


def cmd_alert_test(config: AlertsConfig, *, sender: Sender | None = None, out: TextIO | None = None,
                   now: float | None = None) -> int:
    """Exit 0 if every channel took the test message, 1 if any failed (or none is configured)."""
    out = out or sys.stdout
    urls = config.all_urls
    if not urls:
        print("no alert channels configured (alerts.urls, alerts.channels, alerts.routes)", file=out)
        return EXIT_PROBLEMS
    sender = sender or AppriseSender(config.timeout)
    alert = messages.alert_test_message(host=socket.gethostname(), now=time.time() if now is None else now)
    failed = 0
    names = {url: [name for name, us in config.channels.items() if url in us] for url in urls}
    for url in urls:
        result = sender.send(url, alert.title, alert.body)
        group = f" (channel {', '.join(names[url])})" if names[url] else ""
        if result.ok:
            print(f"ok      {mask_url(url)}{group}", file=out)
        else:
            failed += 1
            print(f"FAILED  {mask_url(url)}{group}: {result.reason}", file=out)
    print(f"{len(urls) - failed} of {len(urls)} channel{'s' if len(urls) != 1 else ''} ok", file=out)
    return EXIT_PROBLEMS if failed else EXIT_OK
