"""Diagnostics on simulated runs: each pitfall fires its code, a healthy run fires nothing."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import pytest

from tb_bn_plugin import metadata
from tb_bn_plugin.diagnostics import (
    SEVERITY_ORDER,
    Finding,
    Thresholds,
    batches,
    diagnose,
    moving_stats,
    values,
)
from tb_bn_plugin.diagnostics import gap as gap_rules
from tb_bn_plugin.numerics.drift import log_variance_ratio, normalized_mean_shift
from tb_bn_plugin.series import GapSeries, LayerConfig, LayerSeries, ReplicaSeries, RunData

RNG_MEAN = np.array([1.5, -2.0, 0.3, 4.0, -0.7, 2.2, -3.1, 0.9])
RNG_STD = np.array([0.8, 2.0, 1.2, 0.5, 3.0, 1.0, 1.7, 2.5])


def across_channels(values: np.ndarray) -> np.ndarray:
    """One summary row (``metadata.SUMMARY_COLUMNS``); NaN when the values are NaN."""
    if np.isnan(values).all():
        return np.full(len(metadata.SUMMARY_COLUMNS), np.nan)
    p05, p50, p95 = np.percentile(values, [5, 50, 95])
    return np.array([values.mean(), values.std(), values.min(), p05, p50, p95, values.max()])


def simulate_layer(
    path: str = "bn",
    index: int = 0,
    *,
    mean: Sequence[float] = RNG_MEAN,
    std: Sequence[float] = RNG_STD,
    steps: int = 50,
    momentum: float = 0.9,
    count: int | Sequence[int] = 64,
    training: Optional[Sequence[bool]] = None,
    trainable: Optional[Sequence[bool]] = None,
    apply_updates: bool = True,
    initial: tuple[Sequence[float] | float, Sequence[float] | float] = (0.0, 1.0),
    log_steps: Optional[Sequence[int]] = None,
    channel_steps: Optional[Sequence[int]] = None,
    epsilon: float = 1e-3,
    seed: int = 0,
) -> LayerSeries:
    """A BN layer trained for ``steps`` steps on N(mean, std**2) inputs, with Keras' EMA.

    ``training``/``trainable``/``count`` are per step (1-based step s at index s-1).
    With ``apply_updates=False`` the moving statistics are never assigned.
    """
    rng = np.random.default_rng(seed)
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    channels = len(mean)
    counts = np.broadcast_to(np.asarray(count), (steps,))
    training = np.ones(steps, bool) if training is None else np.asarray(training, bool)
    trainable = training if trainable is None else np.asarray(trainable, bool)
    log_steps = np.arange(1, steps + 1) if log_steps is None else np.asarray(log_steps)
    channel_steps = log_steps if channel_steps is None else np.asarray(channel_steps)
    moving_mean = np.broadcast_to(np.asarray(initial[0], float), (channels,)).copy()
    moving_variance = np.broadcast_to(np.asarray(initial[1], float), (channels,)).copy()
    gamma, beta = rng.normal(1.0, 0.1, channels), rng.normal(0.0, 0.1, channels)
    per_step = []
    for s in range(1, steps + 1):
        batch_mean = batch_variance = np.full(channels, np.nan)
        if training[s - 1]:
            x = rng.normal(mean, std, size=(int(counts[s - 1]), channels))
            batch_mean, batch_variance = x.mean(axis=0), x.var(axis=0)
            if apply_updates:
                moving_mean = moving_mean * momentum + batch_mean * (1 - momentum)
                moving_variance = moving_variance * momentum + batch_variance * (1 - momentum)
        per_step.append(
            {
                metadata.BATCH_MEAN: batch_mean,
                metadata.BATCH_VARIANCE: batch_variance,
                metadata.MOVING_MEAN: moving_mean.copy(),
                metadata.MOVING_VARIANCE: moving_variance.copy(),
                metadata.GAMMA: gamma,
                metadata.BETA: beta,
                metadata.MEAN_SHIFT: normalized_mean_shift(
                    batch_mean, moving_mean, moving_variance, epsilon
                ),
                metadata.LOG_VAR_RATIO: log_variance_ratio(
                    batch_variance, moving_variance, epsilon
                ),
            }
        )
    logged = [per_step[s - 1] for s in log_steps]
    snapshots = [per_step[s - 1] for s in channel_steps]
    config = LayerConfig(path, index, channels, -1, momentum, epsilon, center=True, scale=True)
    return LayerSeries(
        config=config,
        steps=log_steps.astype(np.int64),
        info={
            "training": training[log_steps - 1].astype(float),
            "trainable": trainable[log_steps - 1].astype(float),
            "count": counts[log_steps - 1].astype(float),
            "momentum": np.full(len(log_steps), momentum),
            "full": np.isin(log_steps, channel_steps).astype(float),
        },
        summary={k: np.stack([across_channels(r[k]) for r in logged]) for k in logged[0]},
        channel_steps=channel_steps.astype(np.int64),
        channels={
            k: np.array([r[k] for r in snapshots]).reshape(len(channel_steps), channels)
            for k in metadata.CHANNEL_STATS
        },
    )


def gap_series(train: float, inference: float, **per_layer: dict[str, float]) -> GapSeries:
    """A one-measurement ``GapSeries``; ``per_layer`` keys are GapSeries fields."""
    fields = {
        name: {path: np.array([value]) for path, value in per_layer.get(name, {}).items()}
        for name in ("compound", "local", "local_derived", "attribution")
    }
    return GapSeries(np.array([50]), np.array([train]), np.array([inference]), {}, **fields)


def run_of(*layers: LayerSeries, gap: Optional[GapSeries] = None) -> RunData:
    return RunData("sim", {layer.config.path: layer for layer in layers}, gap)


def by_code(findings: list[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]


def serious(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in ("error", "warning")]


def healthy_layers(**kwargs) -> list[LayerSeries]:
    return [
        simulate_layer("dense/bn", 0, **kwargs),
        simulate_layer(
            "conv/bn", 1, mean=RNG_MEAN[::-1], std=RNG_STD[::-1], count=64 * 16, seed=1, **kwargs
        ),
    ]


HEALTHY_GAP = gap_series(
    0.50, 0.53, compound={"dense/bn": 0.08, "conv/bn": 0.12}, local={"dense/bn": 0.05}
)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"channel_steps": np.arange(5, 51, 5)},
        {"log_steps": np.arange(10, 51, 10), "channel_steps": np.array([20, 40])},
        {"log_steps": np.array([50])},
    ],
    ids=["every-step", "channels-every-5", "sparse-logging", "single-step"],
)
def test_healthy_run_has_no_findings(kwargs):
    assert diagnose(run_of(*healthy_layers(**kwargs), gap=HEALTHY_GAP)) == []


def test_stale_moving_stats_when_updates_never_run():
    # Seed 001: 2x2x3 images scaled by 100, update ops never run.
    layer = simulate_layer(
        mean=[50.0] * 3, std=[29.0] * 3, count=16, momentum=0.99, apply_updates=False
    )
    findings = diagnose(run_of(layer))
    [stale] = by_code(findings, "stale-moving-stats")
    assert stale.severity == "error" and stale.layers == ["bn"]
    assert stale.evidence["trained_steps_checked"] == 49
    assert stale.evidence["max_relative_change"] == 0.0
    assert stale.evidence["at_initial_values"] is True
    assert stale.evidence["max_mean_shift"] > 40
    assert "UPDATE_OPS" in stale.fix and "training=True" in stale.fix
    [uninit] = by_code(findings, "uninitialized-moving-stats")
    assert uninit.channels == {"bn": [0, 1, 2]}
    assert not by_code(findings, "momentum-one")
    assert not by_code(findings, "slow-momentum"), "moving statistics that never move are not slow"


def test_stale_moving_stats_at_restored_values_is_not_uninitialized():
    restored = (RNG_MEAN - 3.0, RNG_STD**2)
    layer = simulate_layer(initial=restored, apply_updates=False, momentum=0.999)
    findings = diagnose(run_of(layer))
    assert [f.code for f in serious(findings)] == ["stale-moving-stats"]
    assert by_code(findings, "stale-moving-stats")[0].evidence["at_initial_values"] is False


def test_stale_needs_two_logged_steps_and_ignores_converged_layers():
    single = simulate_layer(apply_updates=False, log_steps=[50])
    assert not stale(single)
    # Restored statistics equal to the data's: the layer is fine even without updates.
    converged = simulate_layer(initial=(RNG_MEAN, RNG_STD**2), apply_updates=False, count=4096)
    assert not stale(converged)


def stale(layer: LayerSeries) -> list[Finding]:
    return moving_stats.stale_moving_stats(run_of(layer))


def test_momentum_one():
    # Seed 002: decay=1, one 4x4 image with one channel of values in [0, 255].
    layer = simulate_layer(mean=[127.5], std=[73.6], count=16, momentum=1.0)
    findings = diagnose(run_of(layer))
    [finding] = by_code(findings, "momentum-one")
    assert finding.severity == "error"
    assert finding.evidence == {"momentum": 1.0, "affected_steps": 50, "first_step": 1}
    assert not by_code(findings, "stale-moving-stats")
    assert by_code(findings, "uninitialized-moving-stats")
    assert findings[0].severity == "error"


@pytest.mark.parametrize("momentum", [0.1, 0.01, 0.0])
def test_inverted_momentum_from_pytorch(momentum):
    layer = simulate_layer(momentum=momentum)
    findings = diagnose(run_of(layer))
    [finding] = by_code(findings, "inverted-momentum")
    assert finding.severity == "warning" and finding.layers == ["bn"]
    assert finding.evidence["momentum"] == momentum
    assert finding.evidence["keras_momentum_if_pytorch"] == pytest.approx(1.0 - momentum)
    assert finding.evidence["batches_averaged"] == pytest.approx(1.0 / (1.0 - momentum))
    assert finding.evidence["affected_steps"] == 50
    assert "1 - PyTorch momentum" in finding.fix
    assert [f.code for f in serious(findings)] == ["inverted-momentum"]


@pytest.mark.parametrize("momentum", [0.5, 0.9, 0.99])
def test_inverted_momentum_quiet_for_keras_momenta(momentum):
    assert moving_stats.inverted_momentum(run_of(simulate_layer(momentum=momentum))) == []


def test_inverted_momentum_ignores_frozen_layers():
    layer = simulate_layer(momentum=0.1, training=[False] * 50, initial=(RNG_MEAN, RNG_STD**2))
    assert moving_stats.inverted_momentum(run_of(layer)) == []


SLOW_MEAN, SLOW_STD = [5.0, -3.0, 0.0, 0.05], [1.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize("channel_steps", [None, np.arange(10, 101, 10)])
def test_slow_momentum_with_tf1_default_decay_and_few_steps(channel_steps):
    # Seed 003: decay 0.999 and only 100 steps.
    layer = simulate_layer(
        mean=SLOW_MEAN, std=SLOW_STD, momentum=0.999, steps=100, channel_steps=channel_steps
    )
    findings = diagnose(run_of(layer))
    [slow] = by_code(findings, "slow-momentum")
    assert slow.severity == "warning"
    assert slow.channels == {"bn": [0, 1]}
    assert slow.evidence["momentum"] == 0.999
    assert slow.evidence["steps"] == 100
    assert slow.evidence["initial_weight"] == pytest.approx(0.999**100)
    assert slow.evidence["steps_needed"] == math.ceil(math.log(0.05) / math.log(0.999)) == 2995
    assert slow.evidence["max_lag_mean_shift"] > 3
    assert [f.code for f in serious(findings)] == ["slow-momentum"]


def test_slow_momentum_silent_when_initial_value_is_pretrained_or_forgotten():
    stats = np.asarray(SLOW_MEAN), np.asarray(SLOW_STD) ** 2
    slow = dict(mean=SLOW_MEAN, std=SLOW_STD, steps=100)
    pretrained = simulate_layer(momentum=0.999, initial=stats, **slow)
    warmed_up = simulate_layer(momentum=0.9, **slow)
    assert diagnose(run_of(pretrained)) == []
    assert diagnose(run_of(warmed_up)) == []


@pytest.mark.parametrize("count", [1, 2])
def test_tiny_batch(count):
    layer = simulate_layer(count=count)
    findings = diagnose(run_of(layer))
    [tiny] = by_code(findings, "tiny-batch")
    assert tiny.severity == "warning"
    assert tiny.evidence["min_count"] == count
    assert tiny.evidence["small_batch_steps"] == tiny.evidence["trained_steps"] == 50
    if count == 1:
        assert tiny.evidence["near_zero_variance_fraction"] == 1.0
        assert "batch_variance_cv" not in tiny.evidence
    else:
        assert tiny.evidence["batch_variance_cv"] > 0.5
    # One-value batches make the batch variance 0 by definition: not a dead channel.
    assert not by_code(findings, "dead-channels")
    assert not batches.tiny_batch(run_of(layer), Thresholds(min_count=count))


def test_tiny_batch_from_a_size_one_last_batch():
    counts = np.full(50, 64)
    counts[24::25] = 1
    [tiny] = batches.tiny_batch(run_of(simulate_layer(count=counts)))
    assert tiny.evidence["small_batch_steps"] == 2
    assert tiny.evidence["median_count"] == 64


def with_replicas(
    layer: LayerSeries,
    replicas: int,
    per_replica: int,
    shift: float = 0.0,
    synchronized: bool = False,
) -> tuple[LayerSeries, np.ndarray]:
    """``layer`` with per-replica statistics at its last 10 snapshot steps; (10, R, n, C) samples.

    Replica r's samples are N(mean + r * shift * std, std**2).
    """
    rng = np.random.default_rng(7)
    offsets = np.arange(replicas)[:, None, None] * shift * RNG_STD
    samples = rng.normal(
        RNG_MEAN + offsets, RNG_STD, size=(10, replicas, per_replica, len(RNG_MEAN))
    )
    series = ReplicaSeries(
        steps=layer.channel_steps[-10:],
        count=np.full((10, replicas), float(per_replica)),
        mean=samples.mean(axis=2),
        variance=samples.var(axis=2),
    )
    config = dataclasses.replace(layer.config, synchronized=synchronized)
    return dataclasses.replace(layer, config=config, replicas=series), samples


def replica_spread(samples: np.ndarray) -> float:
    """Median over steps of the channel-mean std(replica means) / global std, (S, R, n, C)."""
    whole = samples.reshape(samples.shape[0], -1, samples.shape[-1])  # every step's global batch
    spread = samples.mean(axis=2).std(axis=1) / np.sqrt(whole.var(axis=1) + 1e-3)
    return float(np.median(spread.mean(axis=1)))


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_replica_batch_too_small_with_spread_of_replica_means(shift):
    layer, samples = with_replicas(simulate_layer(), replicas=4, per_replica=8, shift=shift)
    [finding] = by_code(diagnose(run_of(layer)), "replica-batch-too-small")
    assert finding.severity == "warning" and finding.layers == ["bn"]
    evidence = finding.evidence
    assert (evidence["replicas"], evidence["per_replica_count"], evidence["global_count"]) == (
        4,
        8,
        32,
    )
    assert evidence["small_steps"] == evidence["replica_steps"] == 10
    assert evidence["replica_mean_spread"] == pytest.approx(replica_spread(samples), rel=1e-9)
    assert evidence["iid_mean_spread"] == pytest.approx(8**-0.5)
    if shift:  # replicas that see differently distributed data spread far more than sampling noise
        assert evidence["replica_mean_spread"] > 2 * evidence["iid_mean_spread"]
    else:
        assert evidence["replica_mean_spread"] < 1.5 * evidence["iid_mean_spread"]
    assert "synchronized=True" in finding.fix


def test_replica_batch_too_small_from_the_spread_of_replica_means_at_many_values_per_channel():
    """A conv feature map: many correlated values per channel; replica means see few samples."""
    layer, samples = with_replicas(simulate_layer(), replicas=4, per_replica=256, shift=1.0)
    [finding] = by_code(diagnose(run_of(layer)), "replica-batch-too-small")
    evidence = finding.evidence
    assert evidence["per_replica_count"] == 256 and evidence["small_steps"] == 0
    assert evidence["replica_mean_spread"] == pytest.approx(replica_spread(samples), rel=1e-9)
    assert evidence["replica_mean_spread"] > evidence["spread_threshold"] == 0.5
    assert "global std apart" in finding.title


def test_replica_batch_too_small_silent_for_large_replica_batches_synchronized_or_one_replica():
    layer = simulate_layer()
    silent = [
        with_replicas(layer, replicas=2, per_replica=16)[0],
        with_replicas(layer, replicas=4, per_replica=256)[0],
        with_replicas(layer, replicas=4, per_replica=8, synchronized=True)[0],
        with_replicas(layer, replicas=1, per_replica=8)[0],
        layer,  # single device: no per-replica statistics
    ]
    for case in silent:
        assert batches.replica_batch_too_small(run_of(case)) == []
    assert batches.replica_batch_too_small(run_of(silent[0]), Thresholds(min_replica_count=17))


def test_train_inference_gap_names_layers_with_largest_local_gap():
    gap = gap_series(
        0.4,
        1.0,
        compound={"dense/bn": 0.1, "conv/bn": 0.7},
        local={"dense/bn": 0.05, "conv/bn": 0.6},
    )
    [finding] = diagnose(run_of(*healthy_layers(), gap=gap))
    assert finding.code == "train-inference-gap" and finding.severity == "warning"
    assert finding.layers == ["conv/bn"]
    assert finding.evidence["relative_loss_gap"] == pytest.approx(1.5)
    assert finding.evidence["ranking"] == "local"
    assert finding.evidence["local/conv/bn"] == 0.6
    assert "150%" in finding.title


def test_train_inference_gap_title_reads_a_huge_gap_as_a_factor():
    # A broken run's inference loss can be 10^4 times its training loss (seen on a
    # ResNet50 at momentum 0.99 after 16 steps): a percentage of millions is noise.
    [finding] = diagnose(run_of(*healthy_layers(), gap=gap_series(1.0, 26124.0)))
    assert "a gap of 26,123 times the loss scale" in finding.title
    assert "%" not in finding.title


def test_train_inference_gap_prefers_attribution_and_fires_on_compound_gap():
    gap = gap_series(
        0.4,
        0.45,
        compound={"dense/bn": 1.2, "conv/bn": 1.25},
        local_derived={"dense/bn": 0.5, "conv/bn": 0.6},
        attribution={"dense/bn": 0.8, "conv/bn": 0.3},
    )
    run = run_of(*healthy_layers(), gap=gap)
    [finding] = gap_rules.train_inference_gap(run)
    assert finding.layers == ["dense/bn"]
    assert finding.evidence["ranking"] == "attribution"
    assert finding.evidence["max_compound_gap"] == 1.25
    assert not gap_rules.train_inference_gap(run, Thresholds(compound_gap=1.3))
    assert not gap_rules.train_inference_gap(run_of(*healthy_layers()))
    # A healthy small dense network's compound gap (0.60) no longer fires (threshold was 0.5).
    healthy = gap_series(0.4, 0.45, compound={"dense/bn": 0.6, "conv/bn": 0.3})
    assert not gap_rules.train_inference_gap(run_of(*healthy_layers(), gap=healthy))


def converging_gap(
    train: list[float], inference: list[float], metrics: Optional[dict] = None
) -> GapSeries:
    """A gap measured at every epoch end (steps 100, 200, ...) of a model that learns."""
    steps = 100 * np.arange(1, len(train) + 1)
    metrics = {
        name: {"train": np.array(t, float), "inference": np.array(i, float)}
        for name, (t, i) in (metrics or {}).items()
    }
    return GapSeries(steps, np.array(train), np.array(inference), metrics, {}, {}, {}, {})


def test_train_inference_gap_quiet_on_a_converged_model():
    """Issue #12's false alarm: probe loss 0.0021 vs 0.0036, 100% accuracy in both modes."""
    gap = converging_gap(
        [0.69, 0.08, 0.0021],
        [0.95, 0.09, 0.0036],
        {"accuracy": ([0.55, 0.97, 1.0], [0.5, 0.97, 1.0])},
    )
    run = run_of(*healthy_layers(), gap=gap)
    assert gap_rules.train_inference_gap(run) == []
    summary = gap_rules.gap_summary(gap)
    assert summary.relative_loss_gap == pytest.approx((0.0036 - 0.0021) / 0.0021)  # 71%
    assert summary.loss_reference == 0.69
    assert summary.scaled_loss_gap == pytest.approx((0.0036 - 0.0021) / (0.1 * 0.69))
    assert summary.metric_gaps == {"accuracy": 0.0}
    # Where the loss scale is still the loss itself, the plain relative gap decides.
    big = converging_gap([0.69, 0.3], [0.95, 0.5])
    [finding] = gap_rules.train_inference_gap(run_of(*healthy_layers(), gap=big))
    assert finding.evidence["scaled_loss_gap"] == pytest.approx(0.2 / 0.3)


def test_train_inference_gap_fires_on_metric_disagreement():
    gap = converging_gap(
        [0.69, 0.01],
        [0.95, 0.02],
        {"accuracy": ([0.55, 1.0], [0.5, 0.62]), "mae": ([0.5, 0.1], [0.5, 0.11])},
    )
    [finding] = gap_rules.train_inference_gap(run_of(*healthy_layers(), gap=gap))
    assert finding.evidence["metric_gap/accuracy"] == pytest.approx(0.38)
    assert finding.evidence["metric_gap/mae"] == pytest.approx(0.1)
    assert finding.evidence["scaled_loss_gap"] == pytest.approx(0.01 / 0.069)
    assert "accuracy" in finding.title


def test_frozen_bn_is_info_only():
    pretrained = (RNG_MEAN, RNG_STD**2)
    never, later = [False] * 50, [False] * 20 + [True] * 30
    frozen = simulate_layer("base/bn", 0, training=never, initial=pretrained)
    inference_call = simulate_layer(
        "head/bn", 1, training=never, trainable=[True] * 50, initial=pretrained
    )
    unfrozen_later = simulate_layer("top/bn", 2, training=later, initial=pretrained)
    findings = diagnose(run_of(frozen, inference_call, unfrozen_later))
    assert [(f.code, f.severity, f.layers) for f in findings] == [
        ("frozen-bn", "info", ["base/bn"]),
        ("frozen-bn", "info", ["head/bn"]),
        ("frozen-bn", "info", ["top/bn"]),
    ]
    assert findings[0].title.startswith("non-trainable")
    assert findings[1].title.startswith("called with training=False")
    assert findings[2].evidence["inference_mode_steps"] == 20
    assert findings[2].evidence["first_inference_mode_step"] == 1


def test_uninitialized_moving_stats_lists_mismatched_channels():
    # Seed 004: inference before the moving statistics were ever updated.
    layer = simulate_layer(
        mean=[0.0, 5.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0, 10.0],
        apply_updates=False,
        count=4096,
        log_steps=[3],
    )
    [finding] = serious(diagnose(run_of(layer)))
    assert finding.code == "uninitialized-moving-stats" and finding.severity == "error"
    assert finding.channels == {"bn": [1, 3]}
    assert finding.evidence["mismatched_channels"] == 2
    batch_mean = layer.channels[metadata.BATCH_MEAN][-1]
    expected_shift = abs(batch_mean[1]) / math.sqrt(1.001)
    assert finding.evidence["max_mean_shift"] == pytest.approx(expected_shift)


def test_uninitialized_moving_stats_from_summaries_only():
    layer = simulate_layer(
        mean=[0.0, 5.0], std=[1.0, 1.0], apply_updates=False, log_steps=[3], channel_steps=[]
    )
    [finding] = moving_stats.uninitialized_moving_stats(run_of(layer))
    assert finding.channels == {}
    batch_max = layer.summary_column(metadata.BATCH_MEAN, "max")[-1]
    assert finding.evidence["max_mean_shift"] == pytest.approx(batch_max / math.sqrt(1.001))


def test_dead_channels_from_constant_input_channel():
    std = RNG_STD.copy()
    std[3] = 0.0
    layer = simulate_layer(std=std, channel_steps=np.arange(7, 51, 7))
    [finding] = serious(diagnose(run_of(layer)))
    assert finding.code == "dead-channels" and finding.channels == {"bn": [3]}
    assert finding.evidence["dead_in_batch_variance"] == 1
    assert finding.evidence["dead_in_moving_variance"] == 0
    assert finding.evidence["batch_step"] == 49
    assert "constant" in finding.fix


def test_dead_channels_from_collapsed_moving_variance():
    layer = simulate_layer(count=1, momentum=0.5)
    [finding] = by_code(diagnose(run_of(layer)), "dead-channels")
    assert finding.channels == {"bn": list(range(8))}
    assert finding.evidence["dead_in_moving_variance"] == 8
    assert finding.evidence["dead_in_batch_variance"] == 0


def test_non_finite_flags_values_but_not_batch_stats_of_untrained_steps():
    frozen_later = dict(training=[True] * 30 + [False] * 20, trainable=[True] * 50)
    layer = simulate_layer(**frozen_later)
    layer.channels[metadata.MOVING_MEAN][40:, 2] = np.nan
    layer.summary[metadata.MOVING_MEAN][40:] = np.nan
    layer.channels[metadata.BATCH_VARIANCE][12, 5] = np.inf
    layer.summary[metadata.BATCH_VARIANCE][12] = np.inf
    findings = diagnose(run_of(layer))
    [finding] = by_code(findings, "non-finite")
    assert finding.severity == "error"
    assert finding.channels == {"bn": [2, 5]}
    assert finding.evidence["stats"] == "batch_variance, moving_mean"
    assert finding.evidence["first_step"] == 13
    assert finding.evidence["non_finite_steps"] == 11
    assert not values.non_finite(run_of(simulate_layer(**frozen_later)))


def test_diagnose_orders_by_severity_then_model_order_and_serialises():
    layers = [
        simulate_layer("a", 0, training=[False] * 50, initial=(RNG_MEAN, RNG_STD**2)),
        simulate_layer("b", 1, count=2),
        simulate_layer("c", 2, momentum=1.0),
    ]
    gap = gap_series(0.2, 0.9, local={"b": 0.2, "c": 0.9})
    findings = diagnose(run_of(*layers, gap=gap))
    ranks = [(SEVERITY_ORDER.index(f.severity), f.layers) for f in findings]
    assert ranks == sorted(ranks, key=lambda r: (r[0], ["a", "b", "c"].index(r[1][0])))
    assert [f.code for f in findings][-1] == "frozen-bn"
    for finding in findings:
        obj = finding.to_json()
        assert set(obj) == {"code", "severity", "title", "layers", "channels", "evidence", "fix"}
        json.dumps(obj, allow_nan=False)


def test_to_json_makes_numpy_and_non_finite_values_json_safe():
    evidence = {"a": np.float64(np.inf), "b": np.float32(0.5), "c": np.bool_(True)}
    finding = Finding("x", "info", "t", ["l"], {"l": [np.int64(3)]}, evidence, "f")
    obj = finding.to_json()
    assert obj["evidence"] == {"a": "inf", "b": 0.5, "c": True}
    assert obj["channels"] == {"l": [3]}
    json.dumps(obj, allow_nan=False)


def test_ema_weights_stale_stats_scaled_by_the_untrained_loss():
    """The corpus's numbers: 0.854 (stale) vs 0.026 (re-estimated) fires; 0.015 vs 0.0045 not."""
    from tb_bn_plugin.diagnostics import ema

    epoch_gaps = converging_gap([1.4, 0.05, 0.02], [1.5, 0.05, 0.02])
    assert ema.ema_weights_stale_stats(run_of(*healthy_layers(), gap=epoch_gaps)) == []
    stale = converging_gap([0.026], [0.854])
    run = run_of(*healthy_layers(), gap=epoch_gaps)
    run.ema_weights_gap = stale
    [finding] = ema.ema_weights_stale_stats(run)
    assert finding.code == "ema-weights-stale-stats" and finding.severity == "warning"
    assert finding.evidence["loss_reference"] == 1.4
    assert finding.evidence["scaled_loss_gap"] == pytest.approx((0.854 - 0.026) / 0.14)
    assert "tb_bn_plugin.recalibrate(model" in finding.fix
    assert [f.code for f in diagnose(run)] == ["ema-weights-stale-stats"]
    run.ema_weights_gap = converging_gap([0.0045], [0.0153])
    assert ema.ema_weights_stale_stats(run) == []
