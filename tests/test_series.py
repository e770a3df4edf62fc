"""``series``: the dataclasses readers return, built straight from numpy (no training run)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tb_bn_plugin import metadata
from tb_bn_plugin.numerics.ema import EmaError
from tb_bn_plugin.series import (
    EmaErrorSeries,
    LayerConfig,
    LayerSeries,
    ReplicaSeries,
    RunData,
)

CONFIG = LayerConfig("block/bn", 3, 4, -1, 0.99, 1e-3, True, True)


@pytest.mark.parametrize(
    "center, scale, absent",
    [
        (True, True, set()),
        (False, True, {"beta"}),
        (True, False, {"gamma"}),
        (False, False, {"gamma", "beta"}),
    ],
)
def test_layer_config_stats_follow_center_and_scale(center, scale, absent):
    config = dataclasses.replace(CONFIG, center=center, scale=scale)
    assert config.stats() == tuple(s for s in metadata.CHANNEL_STATS if s not in absent)


def test_layer_config_json_round_trip_ignores_unknown_keys_and_defaults_missing_ones():
    full = dataclasses.replace(CONFIG, synchronized=True, renorm=True, rank=4)
    assert LayerConfig.from_json(full.to_json()) == full
    # A newer writer's extra keys are ignored; an older one's missing optional keys take defaults.
    newer = {**full.to_json(), "groups": 2, "virtual_batch_size": None}
    assert LayerConfig.from_json(newer) == full
    older = {
        k: v for k, v in CONFIG.to_json().items() if k not in ("synchronized", "renorm", "rank")
    }
    assert LayerConfig.from_json(older) == CONFIG
    assert (CONFIG.synchronized, CONFIG.renorm, CONFIG.rank) == (False, False, None)


def test_replica_series_global_moments_are_those_of_the_concatenated_batches():
    rng = np.random.default_rng(0)
    sizes = (3, 5, 8)  # replicas with different counts
    steps = 2
    batches = [
        [rng.normal(r, 1 + r, size=(n, 4)) for r, n in enumerate(sizes)] for _ in range(steps)
    ]
    series = ReplicaSeries(
        steps=np.array([10, 20]),
        count=np.array([[float(len(b)) for b in step] for step in batches]),
        mean=np.array([[b.mean(axis=0) for b in step] for step in batches]),
        variance=np.array([[b.var(axis=0) for b in step] for step in batches]),
    )
    assert series.replicas == 3
    assert series.count.shape == (2, 3) and series.mean.shape == series.variance.shape == (2, 3, 4)
    total = series.global_moments()
    whole = [np.concatenate(step) for step in batches]
    assert total.mean.shape == (2, 4)
    np.testing.assert_allclose(total.count, [[16.0] * 4] * 2)
    np.testing.assert_allclose(total.mean, [w.mean(axis=0) for w in whole], rtol=1e-12)
    np.testing.assert_allclose(total.variance, [w.var(axis=0) for w in whole], rtol=1e-12)


def test_layer_series_shapes_and_summary_column():
    s, t, c, q = 5, 2, CONFIG.channels, len(metadata.SUMMARY_COLUMNS)
    summary = {stat: np.arange(s * q, dtype=float).reshape(s, q) for stat in CONFIG.stats()}
    series = LayerSeries(
        config=CONFIG,
        steps=np.arange(1, s + 1),
        info={field: np.zeros(s) for field in metadata.INFO_FIELDS},
        summary=summary,
        channel_steps=np.array([1, 5]),
        channels={stat: np.zeros((t, c)) for stat in CONFIG.stats()},
    )
    column = series.summary_column(metadata.MOVING_MEAN, "p50")
    assert column.shape == (s,)
    np.testing.assert_array_equal(column, summary[metadata.MOVING_MEAN][:, 4])
    assert series.replicas is None


def test_ema_error_series_error_at():
    series = EmaErrorSeries(
        steps=np.array([8, 16]),
        values={field: np.array([1.0, 2.0]) * (i + 1) for i, field in enumerate(EmaError.FIELDS)},
    )
    assert series.error_at(-1) == EmaError(2.0, 4.0, 6.0, 8.0)
    assert series.error_at(0).score == 1.0 + 3.0


def test_run_data_orders_layers_by_model_index():
    def layer(path: str, index: int) -> LayerSeries:
        config = dataclasses.replace(CONFIG, path=path, index=index)
        empty = np.empty(0)
        return LayerSeries(config, empty, {}, {}, empty, {})

    run = RunData(run="r", layers={"z": layer("z", 0), "a": layer("a", 2), "m": layer("m", 1)})
    assert [s.config.path for s in run.ordered_layers()] == ["z", "m", "a"]
    assert run.gap is None and run.errors == [] and run.ema_error == {}
