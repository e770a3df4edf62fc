"""Per-channel moments of BatchNorm inputs and their exact combination: pure numpy.

``training.precise`` measures per-batch moments on the device (TensorFlow) or
here (``input_moments``, for Keras 3 on JAX and PyTorch) and
``training.capture`` per-replica ones; everything here combines them without
TensorFlow, so it can be tested exactly.

Moments are carried as ``(count, mean, m2)`` per channel, ``m2`` being the
sum of squared deviations from the mean. Batches are combined with Chan et
al.'s parallel algorithm in float64, which stays accurate when the mean is
large against the spread (mean 1e4, std 1), unlike ``E[x^2] - E[x]^2``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Optional

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
    def empty(cls, channels: int) -> Moments:
        z = np.zeros(channels, dtype=np.float64)
        return cls(z.copy(), z.copy(), z.copy())


def input_moments(x: np.ndarray, axis: int, mask: Optional[np.ndarray] = None) -> Moments:
    """Per-channel moments of one batch ``x`` in float64, channels along ``axis``.

    ``mask`` (a Keras mask: ``x``'s shape without its last dimension) counts only
    the positions it marks, as Keras' BatchNormalization does.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    if mask is None:
        weights = np.ones_like(x)
    else:
        weights = np.broadcast_to(np.asarray(mask, np.float64)[..., None], x.shape)
    count = np.sum(weights, axis=axes, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.sum(weights * x, axis=axes, keepdims=True) / count, 0.0)
    m2 = np.sum(weights * (x - mean) ** 2, axis=axes)
    return Moments(count.reshape(-1), mean.reshape(-1), m2.reshape(-1))


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
            part = Moments(
                np.broadcast_to(np.asarray(count, dtype=np.float64), mean.shape).copy(),
                mean,
                np.asarray(m2, dtype=np.float64),
            )
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
