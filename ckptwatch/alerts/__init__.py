"""Alerts: the right message, to the right channel, once.

The package is split so that every decision can be tested without a network or a clock:

- ``kinds``      the alert kinds and their default severities (route keys are validated against them)
- ``config``     ``AlertsConfig`` and URL masking (declared in ``ckptwatch/config/alerts.py``, ``secrets.py``)
- ``messages``   pure builders: a verdict or a finding -> an ``Alert`` (title and body read at 3 a.m.)
- ``conditions`` pure rules for conditions that are not verdicts (a stalled run, a disk filling up)
- ``ledger``     what has been sent, in the service's sqlite state db: de-duplication across restarts
- ``sender``     the only module that imports apprise: one URL, one message, a bool and a reason
- ``dispatch``   routing, retries, rate limits and channel health, in one worker thread; never raises
- ``cli``        ``ckptwatch alert test``

Nothing here imports apprise at import time except ``sender`` (and ``dispatch``/``cli`` only create a
sender when asked to).
"""
