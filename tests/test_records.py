"""Pure record layout: what one logged step stores per layer; no training needed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tb_bn_plugin import metadata, records
from tb_bn_plugin.series import LayerConfig


def _config(channels=5, scale=True, center=True, path="block/bn"):
    return LayerConfig(
        path=path,
        index=0,
        channels=channels,
        axis=3,
        momentum=0.99,
        epsilon=1e-3,
        center=center,
        scale=scale,
    )


def _values(config, seed=0):
    rng = np.random.RandomState(seed)
    c = config.channels
    v = {
        "batch_mean": rng.randn(c),
        "batch_variance": rng.rand(c) + 0.5,
        "moving_mean": rng.randn(c),
        "moving_variance": rng.rand(c) + 0.5,
        "gamma": rng.rand(c),
        "beta": rng.randn(c),
    }
    return {k: v[k] for k in config.stats()}


def test_summary_record_round_trip_matches_numpy():
    config = _config()
    values = _values(config)
    info = {"training": 1.0, "trainable": 1.0, "count": 512.0, "momentum": 0.99, "full": 0.0}
    (record,) = records.summary_records([config], [values], [info])
    got_info, summary = records.split_summary_record(config, record)
    assert got_info["count"] == 512.0 and got_info["training"] == 1.0
    assert set(summary) == set(config.stats()) | {"mean_shift", "log_var_ratio"}
    bm = values["batch_mean"]
    expected = [
        bm.mean(),
        bm.std(),
        bm.min(),
        np.quantile(bm, 0.05),
        np.median(bm),
        np.quantile(bm, 0.95),
        bm.max(),
    ]
    np.testing.assert_allclose(summary["batch_mean"], expected, rtol=1e-6)
    shift = np.abs(bm - values["moving_mean"]) / np.sqrt(values["moving_variance"] + 1e-3)
    np.testing.assert_allclose(summary["mean_shift"][0], shift.mean(), rtol=1e-6)


def test_missing_gamma_beta_are_absent_not_invented():
    config = _config(scale=False, center=False)
    assert config.stats() == ("batch_mean", "batch_variance", "moving_mean", "moving_variance")
    record = records.channel_record(config, _values(config), np.float32)
    assert record.shape == (4, 5)


def test_nan_batch_rows_summarise_to_nan():
    config = _config()
    values = _values(config)
    values["batch_mean"] = np.full(5, np.nan)
    values["batch_variance"] = np.full(5, np.nan)
    info = dict.fromkeys(metadata.INFO_FIELDS, 0.0)
    _, summary = records.split_summary_record(
        config, records.summary_records([config], [values], [info])[0]
    )
    assert np.isnan(summary["batch_mean"]).all() and np.isnan(summary["mean_shift"]).all()
    assert np.isfinite(summary["moving_mean"]).all()


def test_snapshot_interval_keeps_resnet50_within_budget():
    # ResNet50: 53 BN layers, 26,560 channels, all with gamma and beta.
    widths = (
        [64] * 1
        + [64, 64, 256, 256] * 1
        + [64, 64, 256] * 2
        + [128, 128, 512, 512]
        + [128, 128, 512] * 3
        + [256, 256, 1024, 1024]
        + [256, 256, 1024] * 5
        + [512, 512, 2048, 2048]
        + [512, 512, 2048] * 2
    )
    configs = [_config(channels=w, path=f"bn{i}") for i, w in enumerate(widths)]
    assert len(configs) == 53 and sum(widths) == 26560
    budget = 50_000
    k = records.snapshot_interval(configs, np.float32, budget)
    per_log = records.summary_bytes(configs) + records.channel_bytes(configs, np.float32) / k
    assert k > 1 and per_log <= budget
    small = [_config(channels=16, path=f"s{i}") for i in range(4)]
    assert records.snapshot_interval(small, np.float32, budget) == 1


def test_replica_record_round_trip_and_bytes():
    rng = np.random.RandomState(3)
    count, mean, variance = np.array([8.0, 7.0]), rng.randn(2, 5), rng.rand(2, 5)
    record = records.replica_record(count, mean, variance)
    assert record.shape == (2, 11) and record.dtype == np.float32
    for got, want in zip(records.split_replica_record(record, 5), (count, mean, variance)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    stacked = records.split_replica_record(np.stack([record, record]), 5)
    assert [a.shape for a in stacked] == [(2, 2), (2, 2, 5), (2, 2, 5)]
    configs = [
        _config(channels=5),
        dataclasses.replace(_config(channels=9, path="sync"), synchronized=True),
    ]
    assert records.replica_bytes(configs, 1) == 0
    assert (
        records.replica_bytes(configs, 2) == records.EVENT_OVERHEAD_BYTES + record.nbytes
    )  # sync layers: none
    budget = records.summary_bytes(configs) + records.channel_bytes(configs, np.float32)
    assert records.snapshot_interval(configs, np.float32, budget) == 1
    assert records.snapshot_interval(configs, np.float32, budget, replicas=2) == 2


def test_gap_record_and_content_follow_the_documented_layout():
    """[train losses (L), inference losses (L), train metrics (M), inference metrics (M), N x F]."""
    rng = np.random.RandomState(4)
    losses, metrics = rng.randn(2, 3), rng.randn(2, 2)
    layer_values = rng.randn(2, len(metadata.GAP_LAYER_FIELDS))
    layer_values[1, 3] = np.nan  # attribution not measured
    record = records.gap_record(losses[0], losses[1], metrics[0], metrics[1], layer_values)
    assert record.dtype == np.float32 and record.shape == (3 + 3 + 2 + 2 + 2 * 4,)
    np.testing.assert_array_equal(
        record,
        np.concatenate([losses.ravel(), metrics.ravel(), layer_values.ravel()]).astype(np.float32),
    )
    content = records.gap_content(
        ["loss", "a_loss", "b_loss"], ["mae", "acc"], ["x", "y"], 12, "model"
    )
    assert content == {
        "kind": metadata.KIND_GAP,
        "losses": ["loss", "a_loss", "b_loss"],
        "metrics": ["mae", "acc"],
        "layers": ["x", "y"],
        "layer_fields": ["compound", "local", "local_derived", "attribution"],
        "probe_size": 12,
        "scope": "model",
    }
    json.dumps(content)  # stored as JSON
    assert metadata.gap_tag() == "bn_internals/_model/gap"


def test_ema_error_record_content_and_tag():
    from tb_bn_plugin.numerics.ema import EmaError, measure_ema_error

    error = measure_ema_error(
        np.array([1.0, 0.0]), np.array([1.0, 4.0]), np.array([1.5, 0.0]), np.array([1.0, 1.0]), 0.0
    )
    record = records.ema_error_record(error)
    assert record.dtype == np.float32 and record.shape == (len(EmaError.FIELDS),)
    np.testing.assert_array_equal(
        record, np.array([getattr(error, f) for f in EmaError.FIELDS], dtype=np.float32)
    )
    assert records.ema_error_content("enc/bn") == {
        "kind": metadata.KIND_EMA_ERROR,
        "layer_path": "enc/bn",
        "fields": list(EmaError.FIELDS),
    }
    assert metadata.ema_error_tag("enc/bn") == "bn_internals/enc/bn/ema_error"
    assert metadata.layer_tag("enc/bn", metadata.SUFFIX_SUMMARY) == "bn_internals/enc/bn/summary"
    suffixes = (
        metadata.SUFFIX_SUMMARY,
        metadata.SUFFIX_CHANNELS,
        metadata.SUFFIX_REPLICAS,
        metadata.SUFFIX_EMA_ERROR,
    )
    assert suffixes == ("summary", "channels", "replicas", "ema_error")


def test_layer_payload_contents_describe_their_records():
    config = _config(scale=False)
    summary = records.layer_summary_content(config)
    assert summary["kind"] == metadata.KIND_LAYER_SUMMARY
    assert summary["layer"] == config.to_json()
    assert summary["info"] == list(metadata.INFO_FIELDS)
    assert summary["columns"] == list(metadata.SUMMARY_COLUMNS)
    assert len(summary["info"]) + len(summary["rows"]) * len(
        summary["columns"]
    ) == records.summary_record_width(config)
    channels = records.layer_channels_content(config)
    assert channels == {
        "kind": metadata.KIND_LAYER_CHANNELS,
        "layer": config.to_json(),
        "rows": ["batch_mean", "batch_variance", "moving_mean", "moving_variance", "beta"],
    }
    assert records.channel_record(config, _values(config), np.float32).shape[0] == len(
        channels["rows"]
    )
    assert records.layer_replicas_content(config, 2) == {
        "kind": metadata.KIND_LAYER_REPLICAS,
        "layer": config.to_json(),
        "replicas": 2,
        "columns": ["count", "batch_mean", "batch_variance"],
    }


def test_snapshot_cadence_counts_from_latest_snapshot_including_forced_ones():
    cadence = records.SnapshotCadence(3)
    got = [cadence.next(force) for force in [False, False, False, False, True, False, False, False]]
    assert got == [True, False, False, True, True, False, False, True]
    assert all(records.SnapshotCadence(1).next() for _ in range(3))


def test_summary_records_of_many_layers_match_each_layer_alone():
    """Layers are summarised in groups of equal width: grouping must not change any record."""
    configs = [
        _config(channels=5, path="a"),
        _config(channels=7, scale=False, path="b"),
        _config(channels=5, center=False, path="c"),
        _config(channels=5, scale=False, center=False, path="d"),
    ]
    values = [_values(c, seed=i) for i, c in enumerate(configs)]
    values[2]["batch_mean"] = np.full(5, np.nan)  # a layer that did not train at this step
    values[2]["batch_variance"] = np.full(5, np.nan)
    infos = [dict.fromkeys(metadata.INFO_FIELDS, float(i)) for i in range(len(configs))]
    together = records.summary_records(configs, values, infos)
    for config, value, info, record in zip(configs, values, infos, together):
        assert record.dtype == np.float32 and record.shape == (
            records.summary_record_width(config),
        )
        (alone,) = records.summary_records([config], [value], [info])
        np.testing.assert_array_equal(record, alone)
        got_info, summary = records.split_summary_record(config, record)
        assert got_info["count"] == info["count"]
        moving = value["moving_variance"]
        np.testing.assert_allclose(
            summary["moving_variance"],
            [
                moving.mean(),
                moving.std(),
                moving.min(),
                np.quantile(moving, 0.05),
                np.median(moving),
                np.quantile(moving, 0.95),
                moving.max(),
            ],
            rtol=1e-6,
        )
        ratio = np.log((value["batch_variance"] + 1e-3) / (moving + 1e-3))
        np.testing.assert_allclose(summary["log_var_ratio"][6], ratio.max(), rtol=1e-6)
    assert np.isnan(records.split_summary_record(configs[2], together[2])[1]["mean_shift"]).all()


def test_step_functions_record_round_trip():
    content = records.step_functions_content(
        "jax",
        "jax.jit(Functional.train_step)",
        "jax.jit(Functional.predict_step)",
        ["enc/bn", "bn1", "bn2"],
        [0.9, 0.99, 1.0],
        [["enc/bn/moving_mean", "enc/bn/moving_variance"], ["bn1/mm", "bn1/mv"], ["a", "b"]],
    )
    record = records.step_functions_record([True, False, None])
    assert record.dtype == np.float32
    np.testing.assert_array_equal(record, [1.0, 0.0, np.nan])
    assert content["kind"] == metadata.KIND_STEP_FUNCTIONS
    assert metadata.step_functions_tag() == "bn_internals/_model/step_functions"
    # Through the JSON the metadata is stored as.
    described = records.decode_step_functions(json.loads(json.dumps(content)), 7, record)
    assert described.step == 7 and described.backend == "jax"
    assert described.train_function == "jax.jit(Functional.train_step)"
    assert described.inference_function == "jax.jit(Functional.predict_step)"
    assert described.layers == ["enc/bn", "bn1", "bn2"]
    assert described.momentum == [0.9, 0.99, 1.0]
    assert described.moving_variables[0] == ["enc/bn/moving_mean", "enc/bn/moving_variance"]
    assert described.updates_applied == [True, False, None]
    with pytest.raises(ValueError, match="3 layers"):
        records.decode_step_functions(content, 7, record[:2])


@pytest.mark.parametrize("channels", [1, 2, 3, 7, 16, 20, 1000])
def test_summary_across_channels_equals_numpy_quantiles_bit_for_bit(channels):
    """One sort gives min, numpy's linear quantiles and max: the same bits as np.quantile,
    infinite channels (inf - inf between neighbours) and NaN rows included."""
    rng = np.random.default_rng(channels)
    rows = rng.normal(size=(12, channels)) * 10.0 ** rng.integers(-6, 6, size=(12, 1))
    rows[1, 0] = np.nan
    rows[2, :] = np.inf
    rows[3, : max(1, channels // 2)] = -np.inf
    if channels > 2:
        rows[4, :2] = [np.inf, -np.inf]
        rows[5, rng.integers(0, channels, 3)] = [np.inf, -np.inf, np.nan]
    with np.errstate(invalid="ignore"):
        p05, p50, p95 = np.quantile(rows, [0.05, 0.5, 0.95], axis=1)
        expected = np.stack(
            [rows.mean(1), rows.std(1), rows.min(1), p05, p50, p95, rows.max(1)], axis=1
        )
    summary = records.summarize_across_channels(rows)
    assert summary.shape == (12, len(metadata.SUMMARY_COLUMNS))
    np.testing.assert_array_equal(summary, expected)
    assert np.isnan(summary[1]).all()
