"""``reading.load`` over real event files: TensorBoard's multiplexer reads what the writers wrote.

Runs are written by the plugin's ``SummaryWriter`` or, where the content must
be exactly as an older (or broken) writer made it, as ``Summary`` protos by
TensorBoard's own ``EventFileWriter``. A tag that cannot be decoded becomes a
line in its run's ``RunData.errors``, never an exception.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from tb_bn_plugin import metadata, records
from tb_bn_plugin.numerics.ema import EmaError
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.load import (
    READ_AHEAD,
    InlineExecutor,
    iter_runs,
    load_runs,
    read_gap,
    read_stats,
    reader_pool,
)
from tb_bn_plugin.reading.provider import open_logdir
from tb_bn_plugin.reading.tags import list_tags
from tb_bn_plugin.series import LayerConfig

BN = LayerConfig("block/bn", 0, 3, -1, 0.9, 1e-3, True, True)
HEAD = LayerConfig("head_bn", 1, 2, -1, 0.99, 1e-3, False, True)
INFO = {"training": 1.0, "trainable": 1.0, "count": 16.0, "momentum": 0.9, "full": 1.0}
GAP = {
    "kind": metadata.KIND_GAP,
    "losses": ["loss"],
    "metrics": [],
    "layers": [BN.path],
    "layer_fields": list(metadata.GAP_LAYER_FIELDS),
    "probe_size": 8,
    "scope": "batchnorm",
}
EMA = {"kind": metadata.KIND_EMA_ERROR, "layer_path": BN.path, "fields": list(EmaError.FIELDS)}
# A schema version newer than this reader's (it must ask to be upgraded).
FUTURE = metadata.SCHEMA_VERSION + 1


def values(config: LayerConfig, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {stat: rng.uniform(0.5, 2.0, config.channels) for stat in config.stats()}


def info(config: LayerConfig) -> dict[str, float]:
    return {**INFO, "momentum": config.momentum}


class RawWriter:
    """Summaries with any plugin content, through TensorBoard's ``EventFileWriter``."""

    def __init__(self, run_dir: str) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(run_dir)

    def write(self, tag: str, step: int, array, content: dict | bytes) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.util import tensor_util

        if isinstance(content, dict):
            # Version 1 (the oldest): a current reader reads old logs.
            content = json.dumps({"version": 1, **content}).encode()
        summary_metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(
                plugin_name=metadata.PLUGIN_NAME, content=content
            ),
            data_class=summary_pb2.DATA_CLASS_TENSOR,
        )
        value = summary_pb2.Summary.Value(
            tag=tag,
            metadata=summary_metadata,
            tensor=tensor_util.make_tensor_proto(np.asarray(array, dtype=np.float32)),
        )
        event = event_pb2.Event(
            step=step, wall_time=float(step), summary=summary_pb2.Summary(value=[value])
        )
        self._writer.add_event(event)

    def layer(self, config: LayerConfig, step: int, layer_json: dict | None = None) -> None:
        """A summary record and a snapshot of the layer, content as the first writers wrote it."""
        layer_json = layer_json if layer_json is not None else config.to_json()
        self.write(
            metadata.layer_tag(config.path, metadata.SUFFIX_SUMMARY),
            step,
            records.summary_records([config], [values(config, step)], [info(config)])[0],
            {"kind": metadata.KIND_LAYER_SUMMARY, "layer": layer_json},
        )
        self.write(
            metadata.layer_tag(config.path, metadata.SUFFIX_CHANNELS),
            step,
            records.channel_record(config, values(config, step), np.float32),
            {"kind": metadata.KIND_LAYER_CHANNELS, "layer": layer_json},
        )

    def close(self) -> None:
        self._writer.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """``good``: two layers, a gap and an EMA error (the plugin's writer); ``bad``: broken tags."""
    from tb_bn_plugin.summary import SummaryWriter

    root = str(tmp_path_factory.mktemp("load"))
    writer = SummaryWriter(os.path.join(root, "good"))
    for step in (2, 4, 6):
        for config in (BN, HEAD):
            (summary,) = records.summary_records([config], [values(config, step)], [info(config)])
            writer.write(
                metadata.layer_tag(config.path, metadata.SUFFIX_SUMMARY),
                summary,
                step,
                records.layer_summary_content(config),
            )
            writer.write(
                metadata.layer_tag(config.path, metadata.SUFFIX_CHANNELS),
                records.channel_record(config, values(config, step), np.float32),
                step,
                records.layer_channels_content(config),
            )
        writer.write(metadata.gap_tag(), np.arange(2 + 4, dtype=np.float32) * step, step, GAP)
        ema_tag = metadata.layer_tag(BN.path, metadata.SUFFIX_EMA_ERROR)
        writer.write(ema_tag, np.full(4, step / 100, dtype=np.float32), step, EMA)
    writer.close()

    bad = RawWriter(os.path.join(root, "bad"))
    bad.layer(BN, 1)  # still read: the other tags' problems are this run's errors
    bad.write(
        metadata.layer_tag("short", metadata.SUFFIX_SUMMARY),
        1,
        [1.0, 2.0, 3.0],
        {"kind": metadata.KIND_LAYER_SUMMARY, "layer": dataclass_json("short")},
    )
    bad.write(
        metadata.layer_tag("orphan", metadata.SUFFIX_CHANNELS),
        1,
        np.zeros(12),
        {"kind": metadata.KIND_LAYER_CHANNELS, "layer": dataclass_json("orphan")},
    )
    bad.write(metadata.layer_tag("garbled", metadata.SUFFIX_SUMMARY), 1, [0.0], b"{not json")
    bad.write(
        metadata.layer_tag("future", metadata.SUFFIX_SUMMARY),
        1,
        [0.0],
        json.dumps({"version": FUTURE, "kind": metadata.KIND_LAYER_SUMMARY}).encode(),
    )
    bad.write(metadata.layer_tag(BN.path, metadata.SUFFIX_EMA_ERROR), 1, [1.0, 2.0], EMA)
    bad.write(metadata.gap_tag(), 1, [1.0], GAP)
    bad.close()
    return root


def dataclass_json(path: str) -> dict:
    return {**BN.to_json(), "path": path}


def test_load_runs_reads_every_payload(logdir):
    run = load_runs(open_logdir(logdir), runs=["good"])["good"]
    assert run.errors == [] and [s.config.path for s in run.ordered_layers()] == [
        BN.path,
        HEAD.path,
    ]
    bn = run.layers[BN.path]
    assert bn.config == BN
    np.testing.assert_array_equal(bn.steps, [2, 4, 6])
    np.testing.assert_array_equal(bn.channel_steps, [2, 4, 6])
    np.testing.assert_allclose(bn.channels["gamma"][-1], values(BN, 6)["gamma"], rtol=1e-6)
    assert "beta" not in run.layers[HEAD.path].channels
    np.testing.assert_array_equal(run.gap.steps, [2, 4, 6])
    np.testing.assert_array_equal(run.gap.train_loss, [0, 0, 0])
    np.testing.assert_array_equal(run.gap.inference_loss, [2, 4, 6])
    np.testing.assert_array_equal(run.gap.compound[BN.path], [4, 8, 12])
    (path,) = run.ema_error
    ema = run.ema_error[path]
    assert path == BN.path and ema.steps.tolist() == [2, 4, 6]
    np.testing.assert_allclose(ema.values["max_abs_log_var_ratio"], [0.02, 0.04, 0.06], rtol=1e-6)


def test_iter_runs_yields_load_runs_runs_in_order(logdir):
    """The runs arrive in name order with the same data; a caller that stops after the first
    run does not wait for the others. (Read inline here, from TensorBoard's multiplexer; the
    end-to-end tests read ahead in threads from the Rust data server.)"""
    source = open_logdir(logdir)
    loaded = load_runs(source)
    pairs = list(iter_runs(source))
    assert [name for name, _ in pairs] == sorted(loaded) == ["bad", "good"]
    for name, run in pairs:
        assert run.errors == loaded[name].errors and run.version == loaded[name].version
        assert sorted(run.layers) == sorted(loaded[name].layers)
        for path, series in run.layers.items():
            np.testing.assert_array_equal(series.steps, loaded[name].layers[path].steps)
    runs = iter_runs(source)
    assert next(runs)[0] == "bad"
    runs.close()


def test_multiplexer_reads_run_inline_and_fail_at_result(logdir):
    """Reading TensorBoard's Python multiplexer is Python work: no reading threads (they would
    only contend for the GIL); a read runs when its result is asked for (one never asked for
    never runs), and a failing read fails there."""
    pool = reader_pool(open_logdir(logdir), READ_AHEAD, "bn_read")
    assert isinstance(pool, InlineExecutor)
    threads = threading.active_count()
    done = pool.submit(threading.current_thread)
    failed = pool.submit(int, "not a number")
    unasked: list[int] = []
    pool.submit(unasked.append, 1)
    assert done.result() is threading.current_thread() and threading.active_count() == threads
    with pytest.raises(ValueError, match="not a number"):
        failed.result()
    pool.shutdown()
    assert unasked == []


def test_corrupt_tags_are_errors_of_their_run_only(logdir):
    runs = load_runs(open_logdir(logdir))
    assert set(runs) == {"good", "bad"} and runs["good"].errors == []
    bad = runs["bad"]
    assert list(bad.layers) == [BN.path] and bad.gap is None and bad.ema_error == {}
    width = records.summary_record_width(BN)
    short = f"event at step 1 holds 3 values, layout expects {width}"
    errors = sorted(bad.errors)
    expected = sorted(
        [
            "tag 'bn_internals/garbled/summary': unreadable bn_internals metadata",
            "tag 'bn_internals/future/summary': bn_internals data written with schema version "
            f"{FUTURE}",
            f"ema_error of layer {BN.path!r}: unexpected layout",
            "gap: unreadable data (event at step 1 holds 1 values, layout expects 6)",
            "layer 'orphan' has per-channel data but no summary records",
            f"layer 'short': unreadable data ({short})",
        ]
    )
    assert len(errors) == len(expected)
    for line, start in zip(errors, expected):
        assert line.startswith(start), (line, start)


def test_an_old_format_logdir_still_reads(tmp_path):
    """Version 1 as the first writers made it: no synchronized/renorm/rank, no channel ``rows``.

    Also a kind this reader does not know (added later within version 1) and a
    layer config key it does not know: both skipped without an error.
    """
    writer = RawWriter(str(tmp_path / "old"))
    old_json = {
        k: v for k, v in BN.to_json().items() if k not in ("synchronized", "renorm", "rank")
    }
    for step in (1, 2):
        writer.layer(BN, step, old_json)
    writer.write("bn_internals/_model/histogram", 1, [1.0], {"kind": "future_payload", "bins": 3})
    writer.layer(HEAD, 1, {**HEAD.to_json(), "future_option": True})
    writer.close()
    (run,) = load_runs(open_logdir(str(tmp_path))).values()
    assert run.errors == []
    assert run.layers[BN.path].config == BN and run.layers[HEAD.path].config == HEAD
    assert run.layers[BN.path].channels["beta"].shape == (2, 3)
    tags, errors = list_tags(open_logdir(str(tmp_path)))
    assert errors == {} and "future_payload" in {t.kind for t in tags["old"]}


def test_load_runs_selects_layers_channels_gap_and_samples(logdir):
    source = open_logdir(logdir)
    (run,) = load_runs(
        source, runs=["good"], layers=[HEAD.path], with_channels=False, with_gap=False
    ).values()
    assert list(run.layers) == [HEAD.path] and run.gap is None and run.ema_error == {}
    assert run.layers[HEAD.path].channel_steps.shape == (0,)
    sampled = load_runs(source, runs=["good"], downsample=2, channel_downsample=1)["good"]
    assert sampled.layers[BN.path].steps.tolist() == [2, 6]  # evenly spaced, first and last
    assert sampled.layers[BN.path].channel_steps.tolist() == [6]
    assert sampled.ema_error[BN.path].steps.tolist() == [2, 6]
    assert load_runs(source, runs=["nope"]) == {}


def test_cache_serves_the_same_series_until_the_tags_change(logdir):
    source, cache = open_logdir(logdir), SeriesCache()
    first = load_runs(source, runs=["good"], cache=cache)["good"].layers[BN.path]
    assert load_runs(source, runs=["good"], cache=cache)["good"].layers[BN.path] is first
    # Another sampling is another entry.
    assert (
        load_runs(source, runs=["good"], downsample=2, cache=cache)["good"].layers[BN.path]
        is not first
    )
    tiny = SeriesCache(max_bytes=1)  # keeps only the latest entry
    load_runs(source, runs=["good"], cache=tiny)
    assert len(tiny._entries) == 1


def test_read_stats_and_read_gap(logdir):
    stats = read_stats(logdir)
    assert set(stats) == {"good", "bad"}
    steps, moving_mean = stats["good"][BN.path]["moving_mean"]
    assert steps.tolist() == [2, 4, 6] and moving_mean.shape == (3, BN.channels)
    assert set(stats["good"][HEAD.path]) == set(HEAD.stats())
    gaps = read_gap(logdir)
    assert set(gaps) == {"good"} and gaps["good"].steps.tolist() == [2, 4, 6]
