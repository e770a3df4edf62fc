"""Decoding: ``reading.decode`` (events -> series) and the payload layouts in ``records``.

Events are TensorBoard's ``TensorDatum``s as the data providers return them;
records are built by hand from the layouts documented in ``metadata``.
"""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.data import provider as tb_provider

from tb_bn_plugin import metadata, records
from tb_bn_plugin.numerics.ema import EmaError
from tb_bn_plugin.reading import decode
from tb_bn_plugin.reading.tags import TagInfo
from tb_bn_plugin.series import LayerConfig

CONFIG = LayerConfig("bn", 0, 3, -1, 0.9, 1e-3, center=False, scale=True)


def datum(step: int, values, dtype=np.float32) -> tb_provider.TensorDatum:
    return tb_provider.TensorDatum(
        step=step, wall_time=float(step), numpy=np.asarray(values, dtype=dtype)
    )


def gap_content(**overrides):
    return {
        "kind": metadata.KIND_GAP,
        "version": 1,
        "losses": ["loss", "out_b_loss"],
        "metrics": ["mae"],
        "layers": ["a", "b"],
        "layer_fields": list(metadata.GAP_LAYER_FIELDS),
        **overrides,
    }


def gap_record(step: int, n_fields: int = 4) -> np.ndarray:
    """[train losses (2), inference losses (2), train mae, inference mae, 2 layers x fields]."""
    losses = [step, step + 0.5, 10 * step, 10 * step + 0.5]
    metrics = [step / 10, step / 100]
    layers = [100 * step + 10 * i + j for i in range(2) for j in range(n_fields)]
    return np.array(losses + metrics + layers, dtype=np.float32)


def test_gap_series_follows_the_layout():
    tag = TagInfo(metadata.gap_tag(), gap_content())
    gap = decode.gap_series(tag, [datum(2, gap_record(2)), datum(4, gap_record(4))])
    np.testing.assert_array_equal(gap.steps, [2, 4])
    assert gap.steps.dtype == np.int64
    np.testing.assert_array_equal(gap.train_loss, [2, 4])
    np.testing.assert_array_equal(gap.inference_loss, [20, 40])
    # A further loss (one output of a multi-output model) joins the metrics under its name.
    assert set(gap.metrics) == {"mae", "out_b_loss"}
    np.testing.assert_allclose(gap.metrics["out_b_loss"]["inference"], [20.5, 40.5])
    np.testing.assert_allclose(gap.metrics["mae"]["train"], [0.2, 0.4], rtol=1e-6)
    np.testing.assert_allclose(gap.metrics["mae"]["inference"], [0.02, 0.04], rtol=1e-6)
    for j, field in enumerate(metadata.GAP_LAYER_FIELDS):
        by_path = getattr(gap, field)
        assert set(by_path) == {"a", "b"}
        np.testing.assert_array_equal(by_path["b"], [210 + j, 410 + j])


def test_gap_series_keeps_asked_layers_and_fills_unlogged_fields_with_nan():
    content = gap_content(losses=[], metrics=[], layer_fields=[metadata.GAP_LOCAL])
    tag = TagInfo(metadata.gap_tag(), content)
    gap = decode.gap_series(tag, [datum(1, [7.0, 8.0])], layers=["b"])
    assert set(gap.local) == set(gap.compound) == {"b"}
    np.testing.assert_array_equal(gap.local["b"], [8.0])
    assert np.isnan(gap.compound["b"]).all() and np.isnan(gap.attribution["b"]).all()
    assert np.isnan(gap.train_loss).all() and gap.metrics == {}
    # Without "layer_fields" (every version-1 writer wrote it) the documented default applies.
    old = {k: v for k, v in gap_content().items() if k != "layer_fields"}
    assert records.gap_record_width(old) == records.gap_record_width(gap_content()) == 14


def test_gap_series_rejects_a_record_of_another_width():
    tag = TagInfo(metadata.gap_tag(), gap_content())
    with pytest.raises(ValueError, match="event at step 3 holds 13 values, layout expects 14"):
        decode.gap_series(tag, [datum(3, gap_record(3)[:-1])])
    with pytest.raises(ValueError, match="layout expects"):
        records.decode_gap(gap_content(), np.array([1]), np.zeros((1, 13)))


def ema_tag(fields) -> TagInfo:
    content = {"kind": metadata.KIND_EMA_ERROR, "layer_path": "bn", "fields": list(fields)}
    return TagInfo(metadata.layer_tag("bn", metadata.SUFFIX_EMA_ERROR), content)


def test_ema_error_series_matches_fields_by_name():
    fields = EmaError.FIELDS
    events = [datum(16, [5, 6, 7, 8]), datum(8, [1, 2, 3, 4]), datum(16, [9, 10, 11, 12])]
    series = decode.ema_error_series(ema_tag(fields), events)
    np.testing.assert_array_equal(series.steps, [8, 16])  # step order, the last event per step
    assert list(series.values) == list(EmaError.FIELDS)
    assert series.error_at(-1) == EmaError(9.0, 10.0, 11.0, 12.0)
    # Stored in another order, or without a field: matched by name, the missing one NaN.
    reordered = decode.ema_error_series(ema_tag(reversed(fields)), [datum(1, [4, 3, 2, 1])])
    assert reordered.error_at(0) == EmaError(1.0, 2.0, 3.0, 4.0)
    partial = decode.ema_error_series(ema_tag(fields[:2]), [datum(1, [1, 2])])
    np.testing.assert_array_equal(partial.values["max_mean_shift"], [2.0])
    assert np.isnan(partial.values["abs_log_var_ratio"]).all()


def test_ema_error_series_rejects_another_width():
    with pytest.raises(ValueError, match="holds 3 values, layout expects 4"):
        decode.ema_error_series(ema_tag(EmaError.FIELDS), [datum(1, [1, 2, 3])])


def _values(step: int, config: LayerConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    values = {stat: rng.uniform(0.5, 2.0, config.channels) for stat in config.stats()}
    return values


INFO = {"training": 1.0, "trainable": 1.0, "count": 32.0, "momentum": 0.9, "full": 1.0}


def layer_tags(config: LayerConfig, replicas: int = 0) -> dict[str, TagInfo]:
    layer = config.to_json()
    tags = {
        "summary": TagInfo("s", {"kind": metadata.KIND_LAYER_SUMMARY, "layer": layer}),
        "channels": TagInfo(
            "c",
            {"kind": metadata.KIND_LAYER_CHANNELS, "layer": layer, "rows": list(config.stats())},
        ),
    }
    if replicas:
        tags["replicas"] = TagInfo(
            "r", {"kind": metadata.KIND_LAYER_REPLICAS, "layer": layer, "replicas": replicas}
        )
    return tags


def test_layer_series_round_trips_the_records():
    steps, snapshots = [1, 2, 3, 4], [1, 4]
    tags = layer_tags(CONFIG, replicas=2)
    summary = [
        datum(s, records.summary_records([CONFIG], [_values(s, CONFIG)], [INFO])[0]) for s in steps
    ]
    channels = [
        datum(s, records.channel_record(CONFIG, _values(s, CONFIG), np.float32)) for s in snapshots
    ]
    count, mean, var = np.array([16.0, 16.0]), np.ones((2, 3)), np.full((2, 3), 2.0)
    replicas = [datum(s, records.replica_record(count, mean + s, var)) for s in snapshots]
    series = decode.layer_series(
        tags["summary"], summary, tags["channels"], channels, tags["replicas"], replicas
    )
    s, t, c, q = len(steps), len(snapshots), CONFIG.channels, len(metadata.SUMMARY_COLUMNS)
    assert series.config == CONFIG
    np.testing.assert_array_equal(series.steps, steps)
    np.testing.assert_array_equal(series.channel_steps, snapshots)
    assert set(series.info) == set(metadata.INFO_FIELDS)
    assert all(v.shape == (s,) for v in series.info.values())
    assert series.info["momentum"][0] == 0.9  # the configured float64, not float32(0.9)
    assert set(series.summary) == set(records.summary_stats(CONFIG))
    assert all(v.shape == (s, q) for v in series.summary.values())
    assert set(series.channels) == set(CONFIG.stats()) and "beta" not in series.channels
    assert all(v.shape == (t, c) for v in series.channels.values())
    np.testing.assert_allclose(series.channels["gamma"][1], _values(4, CONFIG)["gamma"], rtol=1e-6)
    np.testing.assert_allclose(
        series.summary_column("gamma", "max"),
        [_values(s, CONFIG)["gamma"].max() for s in steps],
        rtol=1e-6,
    )
    assert series.replicas.replicas == 2 and series.replicas.mean.shape == (t, 2, c)
    np.testing.assert_array_equal(series.replicas.mean[1], mean + 4)


def test_layer_series_without_snapshots_or_with_fewer_rows():
    tags = layer_tags(CONFIG)
    summary = [datum(1, records.summary_records([CONFIG], [_values(1, CONFIG)], [INFO])[0])]
    bare = decode.layer_series(tags["summary"], summary)
    assert bare.channel_steps.shape == (0,) and bare.replicas is None
    assert all(v.shape == (0, CONFIG.channels) for v in bare.channels.values())
    # A channels payload naming only some rows: the others stay empty.
    partial = TagInfo("c", {**tags["channels"].content, "rows": ["moving_mean"]})
    series = decode.layer_series(tags["summary"], summary, partial, [datum(1, [1.0, 2.0, 3.0])])
    np.testing.assert_array_equal(series.channels["moving_mean"], [[1.0, 2.0, 3.0]])
    assert series.channels["gamma"].shape == (0, 3)


def test_layer_series_rejects_a_summary_of_another_width():
    tags = layer_tags(CONFIG)
    width = records.summary_record_width(CONFIG)
    with pytest.raises(ValueError, match=f"event at step 5 holds 3 values, layout expects {width}"):
        decode.layer_series(tags["summary"], [datum(5, [1.0, 2.0, 3.0])])


def test_dedupe_steps_keeps_the_last_event_per_step_in_step_order():
    events = [datum(3, [1.0]), datum(1, [2.0]), datum(3, [3.0])]
    kept = decode.dedupe_steps(events)
    assert kept.steps.tolist() == [1, 3]
    table = kept.rows(1)
    assert table.dtype == np.float64 and table.tolist() == [[2.0], [3.0]]
    assert decode.dedupe_steps([]).rows(4).shape == (0, 4)
