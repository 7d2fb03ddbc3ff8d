"""``[watch.loss]``: the loss watch's settings, the one home of their defaults.

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

``[watch.loss] enabled = false`` turns the loss watch off for that root (``WatchConfig.loss`` is then
``None``); ``enabled`` is read by the ``[[watch]]`` table, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ckptwatch.config.kinds import Number, Strings, Whole
from ckptwatch.config.reader import Location, read_table, setting

KINDS = ("trainer_state", "tensorboard", "csv", "jsonl", "text")  # the source kinds ``sources`` may name


class Regex:
    """A regular expression for text logs with a named group ``loss`` (and optionally ``step``)."""

    def read(self, value: Any, at: Location) -> str:
        if not isinstance(value, str):
            raise at.error(f"must be a regular expression string, not {value!r}")
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise at.error(f"not a valid regular expression: {exc}") from None
        if "loss" not in compiled.groupindex:
            raise at.error("needs a named group (?P<loss>...) (and optionally (?P<step>...))")
        return value


@dataclass(frozen=True, kw_only=True)
class LossSettings:
    sources: tuple[str, ...] = setting(Strings("a non-empty list of source kinds or paths", single=True,
                                               non_empty=True), default=("auto",))
    metric: tuple[str, ...] = setting(Strings("a metric name or a list of names", single=True,
                                              non_empty=True),
                                      default=("loss", "train/loss", "train_loss", "train_loss_step",
                                               "training_loss"))
    jump_ratio: float = setting(Number(1.0, above=True), default=1.5)
    window: int = setting(Whole(1), default=5)
    noise_mads: float = setting(Number(0.0), default=3.0)
    mad_floor: float = setting(Number(0.0), default=0.02)
    min_points: int = setting(Whole(1), default=3)
    scratch_fraction: float = setting(Number(0.0, above=True, maximum=1.0), default=0.75)
    regex: str | None = setting(Regex(), default=None)

    def checked(self, at: Location) -> LossSettings:
        """A median of ``min_points`` needs that many points in a window."""
        if self.min_points > self.window:
            raise at.key("min_points").error(f"must not exceed window ({self.window}), not {self.min_points}")
        return self


def parse_loss_settings(raw: dict[str, Any], where: str, source: str) -> LossSettings:
    """``raw`` is the ``[watch.loss]`` table; ``where`` its dotted name (``watch[0].loss``); ``source``
    the config file (or "command line"). Raises ``ConfigError("{source}: {where}.{key}: {why}")``."""
    return read_table(raw, Location(source, where), LossSettings)

