"""The ``[alerts]`` table as the alerts package sees it; it is declared in ``ckptwatch/config/alerts.py``.

``AlertsConfig`` (routes, channels, limits and their defaults) and its parser live with the other config
sections; URL masking and the secret checks live in ``ckptwatch/config/secrets.py``. The names are
re-exported here because the alerts package (dispatch, sender, service, cli) imports them from here.
"""

from __future__ import annotations

from ckptwatch.config.alerts import STALLED_MIN_SECONDS, AlertsConfig, parse_alerts_config
from ckptwatch.config.kinds import parse_size
from ckptwatch.config.secrets import has_literal_secret, mask_url, secret_exposure_warning

__all__ = ["STALLED_MIN_SECONDS", "AlertsConfig", "has_literal_secret", "mask_url", "parse_alerts_config",
           "parse_size", "secret_exposure_warning"]
