"""How far moving statistics are from precise population statistics: pure numpy.

``EmaError`` condenses, per layer, the normalised mean shift and the log
variance ratio of the moving statistics against the population statistics
that ``training.precise`` measures (the same per-channel quantities as
``drift``, with the precise statistics as the reference);
``layer_recalibration`` describes what ``recalibrate`` changed;
``updates_applied`` tells from one training step whether it applied the
moving-average update.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from tb_bn_plugin.formatting import text_table
from tb_bn_plugin.numerics import drift


@dataclasses.dataclass(frozen=True)
class EmaError:
    """How far a layer's moving statistics are from its precise population statistics.

    Per channel, ``shift = |moving_mean - precise_mean| / sqrt(precise_variance + eps)``
    (in population standard deviations) and
    ``log_ratio = |log((moving_variance + eps) / (precise_variance + eps))|``;
    the fields are their mean and max over channels. ``score`` is
    ``mean_shift + abs_log_var_ratio``: 0 for a perfect EMA.
    """

    mean_shift: float
    max_mean_shift: float
    abs_log_var_ratio: float
    max_abs_log_var_ratio: float

    FIELDS = ("mean_shift", "max_mean_shift", "abs_log_var_ratio", "max_abs_log_var_ratio")

    @property
    def score(self) -> float:
        return self.mean_shift + self.abs_log_var_ratio

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, f) for f in self.FIELDS], dtype=np.float32)


# Smallest relative change of a moving statistic that one EMA step must make visible: well above
# float32 rounding (about 6e-8), so an update that was applied cannot read as unchanged.
UPDATE_VISIBLE_RTOL = 1e-5


def updates_applied(
    before: tuple[np.ndarray, np.ndarray],
    after: tuple[np.ndarray, np.ndarray],
    batch: tuple[np.ndarray, np.ndarray],
    momentum: float,
) -> Optional[bool]:
    """Whether one training step applied a BatchNorm layer's moving-average update.

    ``before`` / ``after``: the (moving mean, moving variance) before and after
    the step; ``batch``: the (mean, biased variance) the layer normalised with
    in it. The update ``m·moving + (1−m)·batch`` must visibly change a
    channel where ``(1−m)·|batch − moving|`` exceeds ``UPDATE_VISIBLE_RTOL``
    of the statistic's scale. True: the moving statistics changed. False:
    they are bit-for-bit unchanged although the update would have changed
    them (the step drops it: TF1's update ops never run, seed 001). None:
    not decided: the batch statistics are not finite (the layer normalised
    with its moving statistics) or the update could not change them visibly
    (momentum ≥ 1, batch statistics equal to the moving ones).
    """
    before_values = [np.asarray(v, np.float64) for v in before]
    after_values = [np.asarray(v, np.float64) for v in after]
    batch_values = [np.asarray(v, np.float64) for v in batch]
    if not all(np.all(np.isfinite(v)) for v in batch_values):
        return None
    if any(not np.array_equal(b, a) for b, a in zip(before_values, after_values)):
        return True
    visible = any(
        np.any(
            (1.0 - momentum) * np.abs(new - old)
            > UPDATE_VISIBLE_RTOL * np.maximum(np.abs(old), np.abs(new)) + 1e-30
        )
        for old, new in zip(before_values, batch_values)
    )
    return False if visible and momentum < 1.0 else None


def ema_error_channels(
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    precise_mean: np.ndarray,
    precise_variance: np.ndarray,
    epsilon: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (normalised mean shift, |log variance ratio|) of the EMA against the truth.

    ``drift``'s two quantities with the moving statistics in the place of the
    batch statistics and the precise ones as the reference.
    """
    mm, mv, pm, pv = (
        np.asarray(v, dtype=np.float64)
        for v in (moving_mean, moving_variance, precise_mean, precise_variance)
    )
    shift = drift.normalized_mean_shift(mm, pm, pv, epsilon)
    log_ratio = np.abs(drift.log_variance_ratio(mv, pv, epsilon))
    return shift, log_ratio


def measure_ema_error(
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    precise_mean: np.ndarray,
    precise_variance: np.ndarray,
    epsilon: float,
) -> EmaError:
    """``EmaError`` of one layer (see its docstring)."""
    shift, log_ratio = ema_error_channels(
        moving_mean, moving_variance, precise_mean, precise_variance, epsilon
    )
    return EmaError(
        mean_shift=float(np.mean(shift)),
        max_mean_shift=float(np.max(shift)),
        abs_log_var_ratio=float(np.mean(log_ratio)),
        max_abs_log_var_ratio=float(np.max(log_ratio)),
    )


@dataclasses.dataclass
class LayerRecalibration:
    """One layer's change when its moving statistics were replaced by precise ones."""

    path: str
    count: int
    max_abs_mean_change: float
    min_variance_ratio: float  # new / old moving_variance, over channels
    max_variance_ratio: float
    error_before: EmaError


@dataclasses.dataclass
class RecalibrationReport:
    """What ``recalibrate`` changed, per layer in model order."""

    layers: list[LayerRecalibration]
    batches: int
    passes: int

    def __str__(self) -> str:
        head = (
            f"BatchNorm recalibration: {len(self.layers)} layers, {self.batches} batches, "
            f"{self.passes} pass{'es' if self.passes != 1 else ''}"
        )
        cols = (
            "layer",
            "count",
            "max|dmean|",
            "var ratio (min..max)",
            "EMA err: shift",
            "|log var|",
        )
        rows = [
            (
                r.path,
                str(r.count),
                f"{r.max_abs_mean_change:.4g}",
                f"{r.min_variance_ratio:.4g}..{r.max_variance_ratio:.4g}",
                f"{r.error_before.mean_shift:.3g} (max {r.error_before.max_mean_shift:.3g})",
                f"{r.error_before.abs_log_var_ratio:.3g} "
                f"(max {r.error_before.max_abs_log_var_ratio:.3g})",
            )
            for r in self.layers
        ]
        return "\n".join([head, *text_table(rows, cols)])


def layer_recalibration(
    path: str,
    old_mean: np.ndarray,
    old_variance: np.ndarray,
    new_mean: np.ndarray,
    new_variance: np.ndarray,
    epsilon: float,
    count: int,
) -> LayerRecalibration:
    old_mean, old_variance = np.asarray(old_mean, np.float64), np.asarray(old_variance, np.float64)
    new_mean, new_variance = np.asarray(new_mean, np.float64), np.asarray(new_variance, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = new_variance / old_variance
    return LayerRecalibration(
        path=path,
        count=int(count),
        max_abs_mean_change=float(np.max(np.abs(new_mean - old_mean))),
        min_variance_ratio=float(np.min(ratio)),
        max_variance_ratio=float(np.max(ratio)),
        error_before=measure_ema_error(old_mean, old_variance, new_mean, new_variance, epsilon),
    )
