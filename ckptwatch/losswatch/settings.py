"""``[watch.loss]`` settings: one home for the defaults, and a parser whose errors name the dotted key.

Defaults and why:

- ``sources = ["auto"]``: find every loss source in the run dir (DESIGN.md). Otherwise a list of source
  kinds (``trainer_state``, ``tensorboard``, ``csv``, ``jsonl``, ``text``) and/or paths or globs relative
  to the run dir (``"logs/*.log"``); a path's kind is guessed from its name.
- ``metric``: the names tried, in order, for the loss in structured sources. The default covers the
  Trainer's ``log_history`` (``loss``), its TensorBoard tag (``train/loss``) and Lightning's usual
  ``self.log("train_loss")`` (``train_loss``, ``train_loss_step``).
- ``jump_ratio = 1.5``: seed report 4 saw 3.9x, seed report 1 about 2.3x; a correct resume shows about
  1.0x (the same batches, the same weights). 1.5x leaves room for a noisy or still-falling loss.
- ``window = 5``: points in each median. Five is the smallest window whose median ignores two outliers
  on either side (one spike of a noisy loss must not decide), and small enough to decide within a few
  logged steps of a resume.
- ``noise_mads = 3``: the jump must also exceed 3 median absolute deviations of the reference window,
  so a loss that wanders by 2x anyway (tiny batches, RL rewards) is not alerted.
- ``mad_floor = 0.02``: the MAD is floored at 2% of the reference median. A flat or rounded loss
  (``'loss': '0.35'`` four times) has MAD 0, which would make any change "significant"; the ratio test
  already demands +50%, so the floor only matters for ``jump_ratio`` set close to 1.
- ``min_points = 3``: fewer points than this on either side and the resume is reported but not judged.
- ``scratch_fraction = 0.75``: "restarted from scratch" when the loss after the resume has climbed back
  at least 75% of the way from the pre-resume loss up to the run's initial loss. A fresh model (a fresh
  adapter is the base model) starts at the initial loss and learns a little during the window; 75%
  tolerates that while a merely disturbed resume (optimizer state lost: a bump) stays below.
- ``regex``: an extra pattern for text logs with a named group ``loss`` and optionally ``step``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ckptwatch.errors import ConfigError

KINDS = ("trainer_state", "tensorboard", "csv", "jsonl", "text")
DEFAULT_METRICS = ("loss", "train/loss", "train_loss", "train_loss_step", "training_loss")


@dataclass(frozen=True)
class LossSettings:
    sources: tuple[str, ...] = ("auto",)
    metric: tuple[str, ...] = DEFAULT_METRICS
    jump_ratio: float = 1.5
    window: int = 5
    noise_mads: float = 3.0
    mad_floor: float = 0.02
    min_points: int = 3
    scratch_fraction: float = 0.75
    regex: str | None = None


_KEYS = ("sources", "metric", "jump_ratio", "window", "noise_mads", "mad_floor", "min_points",
         "scratch_fraction", "regex")


def parse_loss_settings(raw: dict[str, Any], where: str, source: str) -> LossSettings:
    """``raw`` is the ``[watch.loss]`` table; ``where`` its dotted name (``watch[0].loss``); ``source``
    the config file. Raises ``ConfigError("{source}: {where}.{key}: {why}")``."""

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {where}.{key}: {why}")

    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: must be a table")
    for key in raw:
        if key not in _KEYS:
            raise fail(key, f"unknown key (known: {', '.join(sorted(_KEYS))})")
    d = LossSettings()

    sources = raw.get("sources", list(d.sources))
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
        raise fail("sources", f"must be a non-empty list of source kinds or paths, not {sources!r}")

    metric = raw.get("metric", list(d.metric))
    if isinstance(metric, str):
        metric = [metric]
    if not isinstance(metric, list) or not metric or not all(isinstance(m, str) and m for m in metric):
        raise fail("metric", f"must be a metric name or a list of names, not {metric!r}")

    def number(key: str, default: float, lo: float, lo_open: bool) -> float:
        v = raw.get(key, default)
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and (v > lo if lo_open else v >= lo)
        if not ok:
            raise fail(key, f"must be a number {'>' if lo_open else '>='} {lo:g}, not {v!r}")
        return float(v)

    def whole(key: str, default: int, lo: int) -> int:
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise fail(key, f"must be a whole number >= {lo}, not {v!r}")
        return v

    jump_ratio = number("jump_ratio", d.jump_ratio, 1.0, True)
    window = whole("window", d.window, 1)
    noise_mads = number("noise_mads", d.noise_mads, 0.0, False)
    mad_floor = number("mad_floor", d.mad_floor, 0.0, False)
    min_points = whole("min_points", d.min_points, 1)
    if min_points > window:
        raise fail("min_points", f"must not exceed window ({window}), not {min_points}")
    scratch = number("scratch_fraction", d.scratch_fraction, 0.0, True)
    if scratch > 1:
        raise fail("scratch_fraction", f"must be in (0, 1], not {scratch!r}")
    regex = raw.get("regex")
    if regex is not None:
        if not isinstance(regex, str):
            raise fail("regex", f"must be a regular expression string, not {regex!r}")
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise fail("regex", f"not a valid regular expression: {exc}") from None
        if "loss" not in compiled.groupindex:
            raise fail("regex", "needs a named group (?P<loss>...) (and optionally (?P<step>...))")
    return LossSettings(tuple(sources), tuple(metric), jump_ratio, window, noise_mads, mad_floor, min_points,
                        scratch, regex)
