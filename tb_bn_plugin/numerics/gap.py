"""Train/inference gap math: pure numpy.

A BatchNormalization layer computes ``y = gamma * (x - mu) / sqrt(var + eps) + beta``
with the batch's ``(mu, var)`` in training mode and the moving statistics in
inference mode. The gap is measured as a relative RMS difference of outputs
(``relative_rms_difference``) or derived from statistics alone
(``local_gap_from_stats``); ``diagnostics`` condenses a logged ``GapSeries`` with them.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


def root_ratio(numerator_sq: np.ndarray, denominator_sq: np.ndarray) -> np.ndarray:
    """``sqrt(numerator_sq / denominator_sq)`` in float64: 0/0 -> 0, x/0 -> inf, NaN propagates.

    The gap's relative RMS differences from their sums of squares (also those
    ``training.gap_probe`` reduces on the device).
    """
    numerator_sq = np.asarray(numerator_sq, dtype=np.float64)
    denominator_sq = np.asarray(denominator_sq, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt(numerator_sq / denominator_sq)
    return np.where((numerator_sq == 0) & (denominator_sq == 0), 0.0, ratio)


def relative_rms_difference(train_out: np.ndarray, infer_out: np.ndarray) -> float:
    """``||train_out - infer_out||_2 / ||train_out||_2`` over all elements.

    ``train_out`` is the reference. Returns 0.0 when both norms are zero (the
    outputs agree), ``inf`` when only the reference is zero, NaN when an input
    holds NaN. Raises ``ValueError`` when the shapes differ.
    """
    reference = np.asarray(train_out, dtype=np.float64)
    other = np.asarray(infer_out, dtype=np.float64)
    if reference.shape != other.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {other.shape}")
    difference_sq = np.sum(np.square(reference - other))
    reference_sq = np.sum(np.square(reference))
    return float(root_ratio(difference_sq, reference_sq))


def local_gap_from_stats(
    batch_mean: np.ndarray,
    batch_variance: np.ndarray,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    gamma: Optional[np.ndarray],
    beta: Optional[np.ndarray],
    epsilon: float,
) -> np.ndarray | float:
    """Expected relative RMS difference a BN layer introduces between its modes.

    Exact for an input whose per-channel mean and (biased) variance are the
    batch statistics, with every channel contributing the same number of
    values. With ``a = 1 / sqrt(var + eps)``, per channel::

        E[d^2] = gamma^2 * (var_b * (a_b - a_m)^2 + (mu_m - mu_b)^2 * a_m^2)
        E[y^2] = gamma^2 * var_b * a_b^2 + beta^2          (training-mode output)

    and the result is ``sqrt(sum_c E[d^2] / sum_c E[y^2])`` (0/0 -> 0, x/0 -> inf).
    ``gamma=None`` means 1 (``scale=False``), ``beta=None`` means 0
    (``center=False``). Inputs broadcast; the channel axis is the last one, so
    (C,) vectors give a float and (S, C) series give an (S,) array. NaN batch
    statistics (steps without training) give NaN.
    """
    mu_b = np.asarray(batch_mean, dtype=np.float64)
    var_b = np.maximum(np.asarray(batch_variance, dtype=np.float64), 0.0)
    mu_m = np.asarray(moving_mean, dtype=np.float64)
    var_m = np.maximum(np.asarray(moving_variance, dtype=np.float64), 0.0)
    gamma_sq = 1.0 if gamma is None else np.square(np.asarray(gamma, dtype=np.float64))
    beta_sq = 0.0 if beta is None else np.square(np.asarray(beta, dtype=np.float64))
    a_b = 1.0 / np.sqrt(var_b + epsilon)
    a_m = 1.0 / np.sqrt(var_m + epsilon)
    diff_sq = gamma_sq * (var_b * np.square(a_b - a_m) + np.square(mu_m - mu_b) * np.square(a_m))
    train_sq = gamma_sq * var_b * np.square(a_b) + beta_sq
    diff_sq, train_sq = np.broadcast_arrays(diff_sq, train_sq)
    result = root_ratio(np.sum(diff_sq, axis=-1), np.sum(train_sq, axis=-1))
    return float(result) if result.ndim == 0 else result


def relative_loss_gap(
    train_loss: np.ndarray | float, inference_loss: np.ndarray | float, floor: float = 1e-8
) -> np.ndarray:
    """``|inference_loss - train_loss| / max(|train_loss|, floor)``, elementwise."""
    train = np.asarray(train_loss, dtype=np.float64)
    inference = np.asarray(inference_loss, dtype=np.float64)
    return np.abs(inference - train) / np.maximum(np.abs(train), floor)


def scaled_gap(
    train_value: float, inference_value: float, reference: float, reference_share: float
) -> float:
    """A mode gap relative to a scale that does not vanish as the model converges.

    ``|inference - train| / max(|train|, reference_share * |reference|)``, with
    ``reference`` the quantity's scale on this task, e.g. the largest
    training-mode probe loss measured (the loss before the model learnt). The
    plain relative gap ``|inference - train| / |train|`` explodes as a loss
    approaches 0: probe losses 0.0021 vs 0.0036 of a converged model are a 72%
    relative gap, but 0.2% of a reference loss of 0.7. Above
    ``reference_share * reference`` both agree. 0/0 gives 0; NaN propagates.
    """
    difference = abs(inference_value - train_value)
    scale = max(abs(train_value), reference_share * abs(reference))
    if scale == 0:
        return 0.0 if difference == 0 else math.inf
    return difference / scale


def attribution_share(layer_loss: float, train_loss: float, inference_loss: float) -> float:
    """``(layer_loss - train_loss) / (inference_loss - train_loss)``, NaN when the modes agree.

    ``layer_loss`` is the loss of a training-mode pass with one layer switched
    to inference mode: the share of the model-level loss gap that layer alone
    accounts for.
    """
    span = inference_loss - train_loss
    if span == 0:
        return float("nan")
    return float((layer_loss - train_loss) / span)
