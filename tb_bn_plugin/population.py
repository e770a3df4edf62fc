"""Population statistics of BatchNorm inputs and the error of the EMA: pure numpy.

``precise.py`` measures per-batch moments on the device; everything here
combines and compares them without TensorFlow, so it can be tested exactly.

Moments are carried as ``(count, mean, m2)`` per channel, ``m2`` being the
sum of squared deviations from the mean. Batches are combined with Chan et
al.'s parallel algorithm in float64, which stays accurate when the mean is
large against the spread (mean 1e4, std 1), unlike ``E[x^2] - E[x]^2``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np


@dataclasses.dataclass
class Moments:
    """Per-channel ``count`` (values seen), ``mean`` and ``m2`` (sum of squared deviations)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @property
    def variance(self) -> np.ndarray:
        """Biased (population) variance ``m2 / count``; NaN where nothing was seen."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.m2 / np.maximum(self.count, 1e-300), np.nan)

    @classmethod
    def empty(cls, channels: int) -> "Moments":
        z = np.zeros(channels, dtype=np.float64)
        return cls(z.copy(), z.copy(), z.copy())


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan's pairwise combination of two sets of moments (channels with count 0 are neutral)."""
    na = np.asarray(a.count, dtype=np.float64)
    nb = np.asarray(b.count, dtype=np.float64)
    n = na + nb
    safe = np.where(n > 0, n, 1.0)
    ma = np.where(na > 0, np.asarray(a.mean, dtype=np.float64), 0.0)
    mb = np.where(nb > 0, np.asarray(b.mean, dtype=np.float64), 0.0)
    delta = mb - ma
    mean = ma + delta * (nb / safe)
    m2 = (
        np.where(na > 0, np.asarray(a.m2, dtype=np.float64), 0.0)
        + np.where(nb > 0, np.asarray(b.m2, dtype=np.float64), 0.0)
        + delta * delta * (na * nb / safe)
    )
    return Moments(n, mean, m2)


def combine_moments(parts: Iterable[Moments | tuple]) -> Moments:
    """Combine per-batch moments (``Moments`` or ``(count, mean, m2)`` tuples) into one.

    Count-weighted: batches of different sizes (and masked batches with
    per-channel counts) contribute in proportion to their values.
    """
    total: Optional[Moments] = None
    for part in parts:
        if not isinstance(part, Moments):
            count, mean, m2 = part
            mean = np.asarray(mean, dtype=np.float64)
            part = Moments(np.broadcast_to(np.asarray(count, dtype=np.float64), mean.shape).copy(), mean, np.asarray(m2, dtype=np.float64))
        total = part if total is None else merge_moments(total, part)
    if total is None:
        raise ValueError("combine_moments needs at least one batch")
    return total


def combine_replicas(count: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> Moments:
    """The global moments of batches split across replicas, from each replica's moments.

    ``count`` (..., R) values per channel on each replica, ``mean`` and biased
    ``variance`` (..., R, C); returns ``Moments`` of shape (..., C), exactly
    those of the concatenated replica batches (Chan's combination in float64).
    """
    count = np.asarray(count, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    return combine_moments(
        (count[..., r, None], mean[..., r, :], variance[..., r, :] * count[..., r, None])
        for r in range(count.shape[-1])
    )


def batch_moments(x: np.ndarray, axis: int = -1, mask: Optional[np.ndarray] = None) -> Moments:
    """Reference moments of one batch computed in numpy (channels along ``axis``)."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    flat = x.reshape(-1, x.shape[-1])
    if mask is None:
        w = np.ones_like(flat)
    else:
        w = np.broadcast_to(np.moveaxis(np.asarray(mask, dtype=np.float64), axis, -1), x.shape).reshape(flat.shape)
    count = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (w * flat).sum(axis=0) / count
    m2 = (w * (flat - np.where(count > 0, mean, 0.0)) ** 2).sum(axis=0)
    return Moments(count, mean, m2)


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


def ema_error_channels(
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    precise_mean: np.ndarray,
    precise_variance: np.ndarray,
    epsilon: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (normalised mean shift, |log variance ratio|) of the EMA against the truth."""
    pm = np.asarray(precise_mean, dtype=np.float64)
    pv = np.maximum(np.asarray(precise_variance, dtype=np.float64), 0.0)
    mm = np.asarray(moving_mean, dtype=np.float64)
    mv = np.maximum(np.asarray(moving_variance, dtype=np.float64), 0.0)
    shift = np.abs(mm - pm) / np.sqrt(pv + epsilon)
    log_ratio = np.abs(np.log((mv + epsilon) / (pv + epsilon)))
    return shift, log_ratio


def ema_error(
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    precise_mean: np.ndarray,
    precise_variance: np.ndarray,
    epsilon: float,
) -> EmaError:
    """``EmaError`` of one layer (see its docstring)."""
    shift, log_ratio = ema_error_channels(moving_mean, moving_variance, precise_mean, precise_variance, epsilon)
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
        cols = ("layer", "count", "max|dmean|", "var ratio (min..max)", "EMA err: shift", "|log var|")
        rows = [
            (
                r.path,
                str(r.count),
                f"{r.max_abs_mean_change:.4g}",
                f"{r.min_variance_ratio:.4g}..{r.max_variance_ratio:.4g}",
                f"{r.error_before.mean_shift:.3g} (max {r.error_before.max_mean_shift:.3g})",
                f"{r.error_before.abs_log_var_ratio:.3g} (max {r.error_before.max_abs_log_var_ratio:.3g})",
            )
            for r in self.layers
        ]
        widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join([head, fmt.format(*cols)] + [fmt.format(*row) for row in rows])


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
        error_before=ema_error(old_mean, old_variance, new_mean, new_variance, epsilon),
    )


EMA_ERROR_CODE = "ema-error"
EMA_ERROR_FIX = (
    "The moving statistics used at inference do not match the population statistics of the "
    "layer's inputs. Recalibrate them after training with tb_bn_plugin.recalibrate(model, "
    "train_data) (precise BatchNorm), raise the batch size, or lower the momentum so the EMA "
    "tracks recent weights."
)


def ema_error_finding(
    errors: Mapping[str, EmaError],
    max_mean_shift: float = 0.5,
    max_abs_log_var: float = math.log(2.0),
    channels: Optional[Mapping[str, Sequence[int]]] = None,
    step: Optional[int] = None,
) -> list:
    """``ema-error`` (warning): some layer's EMA is off its precise population statistics.

    Fires when, for a layer (``errors``: path -> ``EmaError`` in model order),
    some channel's normalised mean shift exceeds ``max_mean_shift`` or its
    |log variance ratio| exceeds ``max_abs_log_var`` (the same defaults as
    ``diagnostics.Thresholds.mismatch_shift`` / ``mismatch_log_var``).
    Returns a list of at most one ``diagnostics.Finding``.
    """
    from tb_bn_plugin.diagnostics import Finding  # optional module; imported lazily

    bad = [
        path for path, e in errors.items()
        if e.max_mean_shift > max_mean_shift or e.max_abs_log_var_ratio > max_abs_log_var
    ]
    if not bad:
        return []
    worst = max(bad, key=lambda p: errors[p].score)
    evidence = {
        "max_mean_shift_threshold": max_mean_shift,
        "max_abs_log_var_threshold": max_abs_log_var,
        "layers": {p: dataclasses.asdict(errors[p]) for p in bad},
    }
    if step is not None:
        evidence["step"] = int(step)
    return [
        Finding(
            code=EMA_ERROR_CODE,
            severity="warning",
            title=(
                f"moving statistics of {len(bad)} BatchNorm layer(s) are off their precise population "
                f"statistics (worst {worst!r}: mean shift up to {errors[worst].max_mean_shift:.3g} std, "
                f"|log var ratio| up to {errors[worst].max_abs_log_var_ratio:.3g})"
            ),
            layers=bad,
            channels={p: list(channels[p]) for p in bad if channels and p in channels},
            evidence=evidence,
            fix=EMA_ERROR_FIX,
        )
    ]
