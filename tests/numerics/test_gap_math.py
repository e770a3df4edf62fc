"""Gap math: the derived local gap equals the measured one on simulated BN layers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tb_bn_plugin.diagnostics.gap import gap_summary
from tb_bn_plugin.numerics.gap import (
    local_gap_from_stats,
    relative_loss_gap,
    relative_rms_difference,
)
from tb_bn_plugin.series import GapSeries


def input_with_exact_stats(rng: np.random.Generator, shape: tuple[int, ...], mean, variance):
    """Channels-last input whose per-channel mean and biased variance are exactly these."""
    z = rng.standard_normal(shape)
    axes = tuple(range(len(shape) - 1))
    z = (z - z.mean(axis=axes)) / z.std(axis=axes)
    return mean + np.sqrt(variance) * z


def batch_norm(x, mean, variance, gamma, beta, epsilon):
    """Keras' BatchNormalization output for given normalising statistics."""
    y = (x - mean) / np.sqrt(variance + epsilon)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def random_layer(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    return {
        "batch_mean": rng.normal(0.0, 3.0, channels),
        "batch_variance": rng.uniform(1e-4, 5.0, channels),
        "moving_mean": rng.normal(0.0, 3.0, channels),
        "moving_variance": rng.uniform(1e-4, 5.0, channels),
        "gamma": rng.normal(1.0, 0.5, channels),
        "beta": rng.normal(0.0, 1.0, channels),
    }


def normalising(stats: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Batch mean/variance and moving mean/variance, in ``local_gap_from_stats`` order."""
    names = ("batch_mean", "batch_variance", "moving_mean", "moving_variance")
    return tuple(stats[k] for k in names)


def measured_gap(rng, stats, shape, gamma, beta, epsilon) -> float:
    x = input_with_exact_stats(rng, shape, stats["batch_mean"], stats["batch_variance"])
    train = batch_norm(x, stats["batch_mean"], stats["batch_variance"], gamma, beta, epsilon)
    infer = batch_norm(x, stats["moving_mean"], stats["moving_variance"], gamma, beta, epsilon)
    return relative_rms_difference(train, infer)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("center", [True, False])
def test_local_gap_from_stats_equals_measured_gap(seed, scale, center):
    rng = np.random.default_rng(seed)
    channels, epsilon = 12, 1e-3
    stats = random_layer(rng, channels)
    gamma = stats["gamma"] if scale else None
    beta = stats["beta"] if center else None
    measured = measured_gap(rng, stats, (6, 5, 7, channels), gamma, beta, epsilon)
    derived = local_gap_from_stats(*normalising(stats), gamma, beta, epsilon)
    assert isinstance(derived, float)
    assert derived > 0.01
    assert derived == pytest.approx(measured, rel=1e-6)


def test_local_gap_is_zero_when_moving_equals_batch_and_nan_without_batch_stats():
    rng = np.random.default_rng(3)
    stats = random_layer(rng, 5)
    batch = stats["batch_mean"], stats["batch_variance"]
    assert local_gap_from_stats(*batch, *batch, stats["gamma"], stats["beta"], 1e-3) == 0.0
    nan = np.full(5, np.nan)
    moving = stats["moving_mean"], stats["moving_variance"]
    assert math.isnan(local_gap_from_stats(nan, nan, *moving, None, None, 1e-3))


def test_local_gap_broadcasts_over_steps():
    rng = np.random.default_rng(4)
    layers = [random_layer(rng, 6) for _ in range(3)]
    stacked = {k: np.stack([layer[k] for layer in layers]) for k in layers[0]}
    series = local_gap_from_stats(*normalising(stacked), stacked["gamma"], stacked["beta"], 1e-3)
    assert series.shape == (3,)
    for row, layer in zip(series, layers):
        single = local_gap_from_stats(*normalising(layer), layer["gamma"], layer["beta"], 1e-3)
        assert row == pytest.approx(single, rel=1e-12)


def test_local_gap_of_constant_channel_with_zero_output_is_infinite():
    # Train output is 0 (zero variance, beta 0) but inference shifts the mean.
    stats = np.array([2.0]), np.array([0.0]), np.array([0.0]), np.array([1.0])
    assert local_gap_from_stats(*stats, None, None, 1e-3) == math.inf


def test_relative_rms_difference_edge_cases():
    a = np.array([[3.0, 4.0]])
    assert relative_rms_difference(a, a) == 0.0
    assert relative_rms_difference(a, np.zeros_like(a)) == pytest.approx(1.0)
    assert relative_rms_difference(a, a + np.array([[0.0, 1.0]])) == pytest.approx(0.2)
    assert relative_rms_difference(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_rms_difference(np.zeros(3), np.ones(3)) == math.inf
    assert math.isnan(relative_rms_difference(np.array([np.nan]), np.array([1.0])))
    with pytest.raises(ValueError):
        relative_rms_difference(np.zeros(3), np.zeros(4))


def test_relative_loss_gap_uses_floor():
    assert relative_loss_gap(2.0, 3.0) == pytest.approx(0.5)
    assert relative_loss_gap(-2.0, -1.0) == pytest.approx(0.5)
    assert relative_loss_gap(0.0, 1e-9, floor=1e-8) == pytest.approx(0.1)


def test_gap_summary_takes_latest_finite_step_and_prefers_measured_local():
    nan = np.nan
    gap = GapSeries(
        steps=np.array([10, 20, 30]),
        train_loss=np.array([1.0, 0.5, nan]),
        inference_loss=np.array([1.5, 0.8, 0.9]),
        metrics={},
        compound={"bn1": np.array([0.1, 0.2, 0.3]), "bn2": np.array([0.1, nan, 0.3])},
        local={"bn1": np.array([0.05, 0.07, 0.0]), "bn2": np.array([nan, nan, nan])},
        local_derived={"bn1": np.array([0.04, 0.06, 0.0]), "bn2": np.array([0.3, 0.4, 0.5])},
        attribution={"bn1": np.array([nan, nan, nan])},
    )
    summary = gap_summary(gap)
    assert summary.step == 20
    assert summary.relative_loss_gap == pytest.approx(0.6)
    assert summary.compound == {"bn1": 0.2}
    assert summary.local == {"bn1": 0.07, "bn2": 0.4}
    assert summary.attribution == {}
    gap.train_loss[:] = nan
    assert gap_summary(gap) is None


def test_attribution_share_is_the_layers_part_of_the_loss_gap():
    from tb_bn_plugin.numerics.gap import attribution_share

    assert attribution_share(1.5, 1.0, 3.0) == 0.25
    assert attribution_share(3.0, 1.0, 3.0) == 1.0
    assert np.isnan(attribution_share(2.0, 1.0, 1.0))  # the modes agree: no gap to share
