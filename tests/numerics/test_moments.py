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


def test_input_moments_channel_axis_and_mask_match_numpy():
    rng = np.random.RandomState(3)
    x = rng.randn(4, 3, 6) * 2 + 1e4  # channels along axis 1 (channels-first), a large mean
    got = moments.input_moments(x.astype(np.float32), axis=1)
    channels_last = np.moveaxis(x.astype(np.float32).astype(np.float64), 1, -1).reshape(-1, 3)
    np.testing.assert_array_equal(got.count, 24)
    np.testing.assert_allclose(got.mean, channels_last.mean(0), rtol=1e-14)
    np.testing.assert_allclose(got.variance, channels_last.var(0), rtol=1e-12)
    # A Keras mask (the input's shape without its channel axis, last) counts marked positions.
    seq = rng.randn(2, 5, 3)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    masked = moments.input_moments(seq, axis=-1, mask=mask)
    kept = seq[mask]
    np.testing.assert_array_equal(masked.count, 7)
    np.testing.assert_allclose(masked.mean, kept.mean(0), rtol=1e-14)
    np.testing.assert_allclose(masked.variance, kept.var(0), rtol=1e-12)
    nothing = moments.input_moments(seq, axis=-1, mask=np.zeros((2, 5), bool))
    np.testing.assert_array_equal(nothing.count, 0)
    assert np.isnan(nothing.variance).all()
