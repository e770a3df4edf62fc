"""Moments of BatchNorm inputs combined exactly (Chan et al.), against numpy on whole batches."""

from __future__ import annotations

import numpy as np

from tb_bn_plugin.numerics import moments


def batch_moments(x: np.ndarray) -> moments.Moments:
    """Reference moments of one batch in numpy: channels along the last axis."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0)
    return moments.Moments(
        np.full(flat.shape[1], float(len(flat))), mean, ((flat - mean) ** 2).sum(axis=0)
    )


def test_combine_moments_unequal_batches_matches_numpy():
    rng = np.random.RandomState(0)
    x = rng.randn(103, 5) * 3 + 7
    parts = [batch_moments(x[a:b]) for a, b in ((0, 40), (40, 41), (41, 100), (100, 103))]
    total = moments.combine_moments(parts)
    np.testing.assert_array_equal(total.count, 103)
    np.testing.assert_allclose(total.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(total.variance, x.var(axis=0), rtol=1e-12)
    # Tuples work too, and an empty batch is neutral.
    again = moments.combine_moments(
        [(p.count, p.mean, p.m2) for p in parts] + [(0, np.zeros(5), np.zeros(5))]
    )
    np.testing.assert_allclose(again.variance, x.var(axis=0), rtol=1e-12)


def test_combine_moments_stable_for_large_mean():
    rng = np.random.RandomState(1)
    x = rng.randn(10_000, 3) + 1e8  # naive E[x^2]-E[x]^2 loses every digit here
    parts = [batch_moments(x[i : i + 999]) for i in range(0, len(x), 999)]
    total = moments.combine_moments(parts)
    np.testing.assert_allclose(total.variance, x.var(axis=0), rtol=1e-6)
    naive = (x**2).mean(axis=0) - x.mean(axis=0) ** 2
    assert (
        np.max(np.abs(naive - x.var(axis=0))) > 1e-3
    )  # the test data does defeat the naive formula


def test_combine_replicas_gives_the_whole_batch_per_step():
    rng = np.random.RandomState(2)
    sizes = (8, 3, 8, 5)  # uneven shares, e.g. a last batch that does not divide evenly
    steps = [rng.randn(sum(sizes), 4) * [1, 2, 3, 4] + [1e4, 0, -5, 2] for _ in range(3)]
    shares = [np.split(x, np.cumsum(sizes)[:-1]) for x in steps]
    total = moments.combine_replicas(
        count=[list(sizes)] * 3,
        mean=[[s.mean(axis=0) for s in step] for step in shares],
        variance=[[s.var(axis=0) for s in step] for step in shares],
    )
    np.testing.assert_array_equal(total.count, np.full((3, 4), sum(sizes)))
    np.testing.assert_allclose(total.mean, [x.mean(axis=0) for x in steps], rtol=1e-12)
    np.testing.assert_allclose(total.variance, [x.var(axis=0) for x in steps], rtol=1e-9)
