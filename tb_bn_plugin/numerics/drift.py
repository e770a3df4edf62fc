"""Drift of batch statistics against moving statistics: pure numpy functions.

Shared by the callback (which summarises them per logged step), the CLI and
the plugin. All functions broadcast over leading axes, so they accept one
step's (C,) vectors or a (steps, C) series alike.
"""

from __future__ import annotations

import numpy as np


def normalized_mean_shift(
    batch_mean: np.ndarray, moving_mean: np.ndarray, moving_variance: np.ndarray, epsilon: float
) -> np.ndarray:
    """``|batch_mean - moving_mean| / sqrt(moving_variance + epsilon)`` per channel.

    How many inference-time standard deviations the batch's mean sits away from
    the mean used at inference.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf statistics stay NaN/Inf
        return np.abs(batch_mean - moving_mean) / np.sqrt(
            np.maximum(moving_variance, 0.0) + epsilon
        )


def log_variance_ratio(
    batch_variance: np.ndarray, moving_variance: np.ndarray, epsilon: float
) -> np.ndarray:
    """``log((batch_variance + eps) / (moving_variance + eps))`` per channel.

    Zero when inference scales like training; ``epsilon`` (the layer's own)
    keeps collapsed channels finite, exactly as the layer itself does.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return np.log(
            (np.maximum(batch_variance, 0.0) + epsilon)
            / (np.maximum(moving_variance, 0.0) + epsilon)
        )


def ema_initial_weight(momentum: np.ndarray | float, steps_done: np.ndarray | int) -> np.ndarray:
    """Weight the moving average still gives its initial value: ``momentum ** steps_done``."""
    return np.power(
        np.asarray(momentum, dtype=np.float64), np.asarray(steps_done, dtype=np.float64)
    )
