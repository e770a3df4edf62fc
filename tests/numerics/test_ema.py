"""The EMA error: the moving statistics against precise ones, against direct arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tb_bn_plugin.numerics import ema


def test_ema_error_math():
    err = ema.measure_ema_error(
        moving_mean=np.array([1.0, 0.0]),
        moving_variance=np.array([4.0, 1.0]),
        precise_mean=np.array([0.0, 0.0]),
        precise_variance=np.array([1.0, 1.0]),
        epsilon=0.0,
    )
    assert err.mean_shift == pytest.approx(0.5) and err.max_mean_shift == pytest.approx(1.0)
    assert err.abs_log_var_ratio == pytest.approx(math.log(4) / 2)
    assert err.max_abs_log_var_ratio == pytest.approx(math.log(4))
    assert err.score == pytest.approx(0.5 + math.log(4) / 2)
    perfect = ema.measure_ema_error(np.ones(3), np.ones(3), np.ones(3), np.ones(3), 1e-3)
    assert perfect.score == 0.0


def test_ema_error_channels_are_drifts_quantities_against_the_precise_statistics():
    rng = np.random.default_rng(3)
    moving_mean, precise_mean = rng.normal(size=(2, 6))
    moving_variance, precise_variance = rng.uniform(0.2, 3.0, size=(2, 6))
    shift, log_ratio = ema.ema_error_channels(
        moving_mean, moving_variance, precise_mean, precise_variance, 1e-3
    )
    np.testing.assert_allclose(
        shift, np.abs(moving_mean - precise_mean) / np.sqrt(precise_variance + 1e-3)
    )
    np.testing.assert_allclose(
        log_ratio, np.abs(np.log((moving_variance + 1e-3) / (precise_variance + 1e-3)))
    )


def test_layer_recalibration_reports_the_change():
    report = ema.layer_recalibration(
        "bn",
        np.array([0.0, 1.0]),
        np.array([1.0, 4.0]),
        np.array([0.5, 1.0]),
        np.array([2.0, 1.0]),
        0.0,
        64,
    )
    assert report.max_abs_mean_change == pytest.approx(0.5)
    assert (report.min_variance_ratio, report.max_variance_ratio) == (0.25, 2.0)
    assert report.count == 64 and report.error_before.max_mean_shift == pytest.approx(
        0.5 / math.sqrt(2)
    )
    text = str(ema.RecalibrationReport([report], batches=3, passes=1))
    assert text.splitlines()[0] == "BatchNorm recalibration: 1 layers, 3 batches, 1 pass"
    assert text.splitlines()[2].startswith("bn ")


def test_updates_applied_tells_an_applied_update_from_a_dropped_one():
    rng = np.random.default_rng(5)
    before = (rng.normal(size=4), rng.uniform(0.5, 2.0, 4))
    batch = (rng.normal(size=4), rng.uniform(0.5, 2.0, 4))
    m = 0.9
    # Keras' update, in float32 like the variables.
    applied = tuple(
        (np.float32(m) * b.astype(np.float32) + np.float32(1 - m) * n.astype(np.float32))
        for b, n in zip(before, batch)
    )
    assert ema.updates_applied(before, applied, batch, m) is True
    assert ema.updates_applied(before, before, batch, m) is False  # seed 001: dropped
    # One changed statistic is enough.
    assert ema.updates_applied(before, (before[0], applied[1]), batch, m) is True


def test_updates_applied_is_undecided_where_the_update_cannot_show():
    before = (np.zeros(3), np.ones(3))
    batch = (np.array([0.5, -1.0, 2.0]), np.array([2.0, 3.0, 0.5]))
    assert ema.updates_applied(before, before, batch, 1.0) is None  # momentum 1 keeps them
    assert ema.updates_applied(before, before, before, 0.9) is None  # batch == moving
    nan = (np.full(3, np.nan), np.full(3, np.nan))  # normalised with the moving statistics
    assert ema.updates_applied(before, before, nan, 0.9) is None
    # A change below float32 resolution of the statistics would not show: not decided.
    moving = (np.full(3, 2.0), np.ones(3))
    tiny = (moving[0] + 1e-9, moving[1])
    assert ema.updates_applied(moving, moving, tiny, 0.9) is None
