"""SummaryWriter: tags, metadata once per tag, values, graphs; read back with TensorBoard."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from tb_bn_plugin import metadata, records
from tb_bn_plugin.records import LayerSnapshot
from tb_bn_plugin.series import LayerConfig
from tb_bn_plugin.summary import SummaryWriter, layer_items, write_graph


def _config(path: str, channels: int, scale: bool = True) -> LayerConfig:
    return LayerConfig(
        path=path,
        index=0,
        channels=channels,
        axis=-1,
        momentum=0.9,
        epsilon=1e-3,
        center=True,
        scale=scale,
    )


def _snapshot(config: LayerConfig, seed: int, replicas: bool = False) -> LayerSnapshot:
    rng = np.random.RandomState(seed)
    values = {s: rng.rand(config.channels) + 0.5 for s in config.stats()}
    per_replica = None
    if replicas:
        per_replica = (
            np.array([8.0, 8.0]),
            rng.randn(2, config.channels),
            rng.rand(2, config.channels),
        )
    return LayerSnapshot(
        config=config,
        values=values,
        training=True,
        trainable=True,
        count=16.0,
        momentum=config.momentum,
        replicas=per_replica,
    )


def _events(run_dir: str) -> list:
    """Every (step, tag, tensor, metadata bytes) in the run's event files, in file order."""
    out = []
    for path in sorted(tf.io.gfile.glob(os.path.join(run_dir, "events*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.append(
                    (
                        event.step,
                        value.tag,
                        tensor_util.make_ndarray(value.tensor),
                        value.metadata.SerializeToString(),
                    )
                )
    return out


def test_layer_steps_write_every_tag_with_its_metadata_once(tmp_path):
    configs = [_config("enc/bn", 3), _config("head_bn", 5, scale=False)]
    writer = SummaryWriter(str(tmp_path))
    written = {}
    for step, full in ((10, True), (20, False), (30, True)):
        snaps = [_snapshot(c, seed=step + i, replicas=(i == 0)) for i, c in enumerate(configs)]
        writer.layer_step(snaps, step, full, np.dtype(np.float16))
        for tag, tensor, content in layer_items(snaps, full, np.dtype(np.float16)):
            written[(step, tag)] = (tensor, content())
    writer.close()

    events = _events(str(tmp_path))
    assert {(step, tag) for step, tag, _, _ in events} == set(written)
    tags = {tag for _, tag, _, _ in events}
    assert tags == {
        metadata.layer_tag("enc/bn", metadata.SUFFIX_SUMMARY),
        metadata.layer_tag("enc/bn", metadata.SUFFIX_CHANNELS),
        metadata.layer_tag("enc/bn", metadata.SUFFIX_REPLICAS),
        metadata.layer_tag("head_bn", metadata.SUFFIX_SUMMARY),
        metadata.layer_tag("head_bn", metadata.SUFFIX_CHANNELS),
    }
    with_metadata = [(step, tag) for step, tag, _, md in events if md]
    # Each tag's first event carries the metadata, no later one does.
    first_step = {tag: min(s for s, t, _, _ in events if t == tag) for tag in tags}
    assert sorted(with_metadata) == sorted((first_step[tag], tag) for tag in tags)
    for step, tag, tensor, md in events:
        expected, content = written[(step, tag)]
        assert tensor.dtype == expected.dtype and tensor.shape == expected.shape
        np.testing.assert_array_equal(tensor, expected)
        if md:
            parsed = metadata.parse_plugin_content(
                metadata.summary_pb2.SummaryMetadata.FromString(md).plugin_data.content
            )
            assert parsed == {"version": metadata.SCHEMA_VERSION, **json.loads(json.dumps(content))}

    # The values are the documented records of independent numpy statistics.
    config = configs[1]
    snap = _snapshot(config, seed=21)
    summary = written[(20, metadata.layer_tag("head_bn", metadata.SUFFIX_SUMMARY))][0]
    info, stats = records.split_summary_record(config, summary)
    assert info["full"] == 0.0 and info["count"] == 16.0 and info["training"] == 1.0
    mv = snap.values["moving_variance"]
    np.testing.assert_allclose(
        stats["moving_variance"],
        [mv.mean(), mv.std(), mv.min(), *np.quantile(mv, [0.05, 0.5, 0.95]), mv.max()],
        rtol=1e-6,
    )
    channels = written[(30, metadata.layer_tag("head_bn", metadata.SUFFIX_CHANNELS))][0]
    assert channels.dtype == np.float16 and channels.shape == (5, 5)  # no gamma row
    np.testing.assert_array_equal(
        channels[2], _snapshot(config, seed=31).values["moving_mean"].astype(np.float16)
    )


def test_event_accumulator_reads_a_payload_and_its_content(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    tensor = np.array([[1.5, -2.0], [0.25, 4.0]], dtype=np.float32)
    content = records.gap_content(["loss"], [], ["bn"], 8, "batchnorm")
    for step in (1, 2):
        writer.write(metadata.gap_tag(), tensor * step, step, content)
    writer.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    assert acc.Tags()["tensors"] == [metadata.gap_tag()]
    events = acc.Tensors(metadata.gap_tag())
    assert [e.step for e in events] == [1, 2]
    for e in events:
        np.testing.assert_array_equal(tensor_util.make_ndarray(e.tensor_proto), tensor * e.step)
    md = acc.SummaryMetadata(metadata.gap_tag())
    assert md.plugin_data.plugin_name == metadata.PLUGIN_NAME
    assert md.data_class == metadata.summary_pb2.DATA_CLASS_TENSOR
    parsed = metadata.parse_plugin_content(md.plugin_data.content)
    assert parsed["kind"] == metadata.KIND_GAP and parsed["layers"] == ["bn"]


def test_write_graph_to_a_logdir_and_to_a_writer(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        tf.identity(x * 2.0, name="doubled")
    graph_def = graph.as_graph_def()
    write_graph(graph_def, str(tmp_path / "from_dir"))
    writer = SummaryWriter(str(tmp_path / "from_writer"))
    writer.graph(graph_def)
    writer.close()
    for run in ("from_dir", "from_writer"):
        acc = event_accumulator.EventAccumulator(str(tmp_path / run))
        acc.Reload()
        assert acc.Tags()["graph"]
        names = {node.name for node in acc.Graph().node}
        assert {"x", "doubled"} <= names


def test_for_run_refuses_an_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    strategy = tf.distribute.get_strategy()
    with pytest.raises(PermissionError, match="cannot write event files"):
        SummaryWriter.for_run(str(blocker / "train"), strategy)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="locked"):
                SummaryWriter.for_run(str(locked / "train"), strategy)
        finally:
            locked.chmod(0o700)
    run_dir = tmp_path / "ok" / "train"
    writer = SummaryWriter.for_run(str(run_dir), strategy)  # the chief writes into run_dir
    assert writer.logdir == str(run_dir) and not writer.temporary
    assert not [p for p in os.listdir(run_dir) if p.startswith(".tb_bn_write_check")]
    writer.close()


def test_a_temporary_writer_deletes_its_directory_on_close(tmp_path):
    logdir = tmp_path / "worker"
    writer = SummaryWriter(str(logdir), temporary=True)
    writer.write(metadata.gap_tag(), np.zeros(2, np.float32), 1, {"kind": metadata.KIND_GAP})
    writer.flush()
    assert os.listdir(logdir)
    writer.close()
    assert not logdir.exists()


def test_the_tensorflow_free_writer_writes_the_same_events(tmp_path):
    """``SummaryWriter(tensorflow=False)`` (Keras on JAX/PyTorch) writes what ``tf.summary`` writes:
    the same tags, steps, tensors (dtype, shape, bytes) and metadata, in the same order; and its
    graph event is the run graph TensorBoard reads."""
    configs = [_config("enc/bn", 3), _config("head_bn", 5, scale=False)]
    runs = {}
    for name, tensorflow in (("tf", True), ("free", False)):
        writer = SummaryWriter(str(tmp_path / name), tensorflow=tensorflow)
        for step, full in ((10, True), (20, False), (30, True)):
            snaps = [_snapshot(c, seed=step + i, replicas=(i == 0)) for i, c in enumerate(configs)]
            writer.layer_step(snaps, step, full, np.dtype(np.float16))
        writer.write("bn_internals/extra", np.arange(4.0), 40, {"kind": "extra"})
        writer.close()
        runs[name] = _events(str(tmp_path / name))
    assert len(runs["tf"]) == len(runs["free"]) > 0
    for (step_a, tag_a, tensor_a, md_a), (step_b, tag_b, tensor_b, md_b) in zip(
        runs["tf"], runs["free"]
    ):
        assert (step_a, tag_a, md_a) == (step_b, tag_b, md_b)
        assert tensor_a.dtype == tensor_b.dtype and tensor_a.shape == tensor_b.shape
        assert tensor_a.tobytes() == tensor_b.tobytes()

    graph = tf.compat.v1.GraphDef()
    graph.node.add(name="bn", op="FusedBatchNormV3")
    writer = SummaryWriter(str(tmp_path / "graph"), tensorflow=False)
    writer.graph(graph)
    writer.close()
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "graph"))
    accumulator.Reload()
    assert [n.name for n in accumulator.Graph().node] == ["bn"]
