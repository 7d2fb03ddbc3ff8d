"""The ``[watch.loss]`` settings as the loss watch sees them; declared in ``ckptwatch/config/loss.py``.

``LossSettings`` (with its defaults and why), the source kinds and the parser live with the other config
sections; the loss watch's modules import them from here.
"""

from __future__ import annotations

from ckptwatch.config.loss import KINDS, LossSettings, parse_loss_settings

__all__ = ["KINDS", "LossSettings", "parse_loss_settings"]
