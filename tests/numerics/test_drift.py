"""Drift of batch against moving statistics, checked against direct numpy arithmetic."""

from __future__ import annotations

import numpy as np

from tb_bn_plugin.numerics import drift


def test_normalized_mean_shift_in_inference_standard_deviations():
    rng = np.random.default_rng(0)
    batch_mean, moving_mean = rng.normal(size=(2, 5, 8))
    moving_variance = rng.uniform(0.1, 4.0, size=(5, 8))
    expected = np.abs(batch_mean - moving_mean) / np.sqrt(moving_variance + 1e-3)
    np.testing.assert_allclose(
        drift.normalized_mean_shift(batch_mean, moving_mean, moving_variance, 1e-3), expected
    )
    np.testing.assert_allclose(
        drift.normalized_mean_shift(np.array([2.0]), np.array([0.0]), np.array([4.0]), 0.0), [1.0]
    )


def test_log_variance_ratio_uses_the_layers_epsilon():
    batch_variance = np.array([4.0, 0.0, 1.0])
    moving_variance = np.array([1.0, 0.0, 2.0])
    eps = 1e-3
    expected = np.log((batch_variance + eps) / (moving_variance + eps))
    np.testing.assert_allclose(
        drift.log_variance_ratio(batch_variance, moving_variance, eps), expected
    )
    # Two collapsed channels agree (ratio 1), exactly as the layer treats them.
    assert drift.log_variance_ratio(np.array([0.0]), np.array([0.0]), eps)[0] == 0.0


def test_negative_variances_from_round_off_count_as_zero():
    """Variances a float32 EMA left slightly negative must not give NaN."""
    shift = drift.normalized_mean_shift(np.array([1.0]), np.array([0.0]), np.array([-1e-9]), 1e-3)
    ratio = drift.log_variance_ratio(np.array([-1e-9]), np.array([1.0]), 1e-3)
    assert np.isfinite(shift).all() and np.isfinite(ratio).all()
    np.testing.assert_allclose(shift, [1.0 / np.sqrt(1e-3)])


def test_nan_statistics_stay_nan_without_warnings(recwarn):
    shift = drift.normalized_mean_shift(np.array([np.nan]), np.array([0.0]), np.array([1.0]), 1e-3)
    ratio = drift.log_variance_ratio(np.array([np.nan]), np.array([1.0]), 1e-3)
    assert np.isnan(shift).all() and np.isnan(ratio).all()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_ema_initial_weight_is_momentum_to_the_steps():
    np.testing.assert_allclose(drift.ema_initial_weight(0.999, [0, 1000]), [1.0, 0.999**1000])
    np.testing.assert_allclose(
        drift.ema_initial_weight(np.array([0.9, 0.99]), 10), [0.9**10, 0.99**10]
    )
