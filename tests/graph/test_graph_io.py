"""Graphs in and out: ``graph.load`` (files), ``summary.write_graph`` and
``reading.graph.read_run_graph`` (event files), ``training.graph_trace``.

Graphs go through real files, real event files, and TensorBoard's own
``EventMultiplexer`` + ``MultiplexerDataProvider`` and Graphs plugin; the
``tb-bn graph`` command is tested in ``tests/cli/test_graph_cli.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from _bn_graphs import build_seed004_graph
from tensorboard import context
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.graph import graphs_plugin

from tb_bn_plugin import summary
from tb_bn_plugin.graph import load
from tb_bn_plugin.graph.model import KIND_SEPARATE_FUNCTIONS, KIND_SWITCH_MERGE, KIND_UNSWITCHED
from tb_bn_plugin.graph.sites import find_sites
from tb_bn_plugin.reading import graph
from tb_bn_plugin.training import graph_trace


def _provider(logdir):
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return tb_data_provider.MultiplexerDataProvider(multiplexer, str(logdir))


def _read_back(logdir, run):
    return graph.read_run_graph(_provider(logdir), context.RequestContext(), "", run)


def _node_names(graph_def):
    return [node.name for node in graph_def.node]


@pytest.fixture
def seed004():
    return build_seed004_graph("FusedBatchNorm", freeze=True)


# ---------------------------------------------------------------------------
# load_graph_def


@pytest.mark.parametrize("filename, as_text", [("frozen.pb", False), ("frozen.pbtxt", True)])
def test_load_graph_def_binary_and_text(tmp_path, seed004, filename, as_text):
    tf.io.write_graph(seed004, str(tmp_path), filename, as_text=as_text)
    graph_def = load.load_graph_def(tmp_path / filename)
    assert _node_names(graph_def) == _node_names(seed004)
    (site,) = find_sites(graph_def).sites
    assert site.name == "bn" and site.kind == KIND_SWITCH_MERGE


def test_load_meta_graph(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(build_seed004_graph(), name="")
        tf.compat.v1.train.export_meta_graph(str(tmp_path / "model.meta"))
    graph_def = load.load_graph_def(tmp_path / "model.meta")
    (site,) = find_sites(graph_def).sites
    assert site.updates_wired is True


class _InferenceModule(tf.Module):
    def __init__(self):
        super().__init__()
        self.moving_mean = tf.Variable(tf.zeros(3), name="moving_mean")
        self.moving_variance = tf.Variable(tf.ones(3), name="moving_variance")

    @tf.function(input_signature=[tf.TensorSpec((None, 2, 2, 3), tf.float32)])
    def __call__(self, x):
        with tf.name_scope("bn"):
            return tf.compat.v1.nn.fused_batch_norm(
                x,
                tf.ones(3),
                tf.zeros(3),
                self.moving_mean,
                self.moving_variance,
                is_training=False,
            )[0]


@pytest.mark.parametrize("target", ["directory", "saved_model.pb"])
def test_load_saved_model(tmp_path, target):
    tf.saved_model.save(_InferenceModule(), str(tmp_path / "export"))
    path = tmp_path / "export" if target == "directory" else tmp_path / "export" / "saved_model.pb"
    graph_def = load.load_graph_def(path)
    assert graph_def.library.function
    (site,) = find_sites(graph_def).sites
    assert site.name == "bn"
    assert site.kind == KIND_UNSWITCHED
    assert site.training_path == []
    assert [ref.op for ref in site.inference_path] == ["FusedBatchNormV3"]
    assert site.inference_path[0].function  # lives in the function library


@pytest.mark.parametrize(
    "filename, content, message",
    [
        ("garbage.pb", b"\xff\xfe\x00 definitely not a graph \x13\x37", "not a TensorFlow graph"),
        ("notes.pbtxt", b"hello: world\n", "not a TensorFlow graph"),
        ("empty.pb", b"", "file is empty"),
        ("model.keras", b"PK\x03\x04 zipped keras", "trace_model_graph"),
    ],
)
def test_load_rejects_non_graphs(tmp_path, filename, content, message):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(load.GraphLoadError, match=message) as info:
        load.load_graph_def(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


def test_load_rejects_missing_file_and_plain_directory(tmp_path):
    with pytest.raises(load.GraphLoadError, match="cannot read"):
        load.load_graph_def(tmp_path / "missing.pb")
    with pytest.raises(load.GraphLoadError, match="not a SavedModel"):
        load.load_graph_def(tmp_path)


# ---------------------------------------------------------------------------
# write_graph / read_run_graph through TensorBoard's data provider


def test_write_then_read_back(tmp_path, seed004):
    summary.write_graph(seed004, tmp_path / "seed004")
    writer = tf.summary.create_file_writer(str(tmp_path / "scalars_only"))
    with writer.as_default():
        tf.summary.scalar("loss", 1.0, step=0)
    writer.close()

    graph_def = _read_back(tmp_path, "seed004")
    assert _node_names(graph_def) == _node_names(seed004)
    assert _read_back(tmp_path, "scalars_only") is None
    assert _read_back(tmp_path, "no_such_run") is None


@pytest.fixture
def keras3_model(keras):
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, name="dense")(inputs))
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden), name="net")


def test_traced_model_through_tensorboard(tmp_path, keras3_model):
    """What the callback writes: TensorBoard's Graphs plugin and our analysis both read it."""
    keras3_model.compile(optimizer="sgd", loss="mse")
    writer = tf.summary.create_file_writer(str(tmp_path / "train"))
    summary.write_graph(graph_trace.trace_model_graph(keras3_model), writer)
    writer.close()

    provider = _provider(tmp_path)
    graph_def = graph.read_run_graph(provider, context.RequestContext(), "", "train")
    (site,) = find_sites(graph_def).sites
    assert site.kind == KIND_SEPARATE_FUNCTIONS
    assert site.updates_wired is True

    plugin = graphs_plugin.GraphsPlugin(
        base_plugin.TBContext(data_provider=provider, logdir=str(tmp_path))
    )
    body, mime_type = plugin.graph_impl(
        context.RequestContext(), "train", None, False, experiment=""
    )
    assert mime_type == "text/x-protobuf"
    assert 'name: "train_step/StatefulPartitionedCall"' in body
    assert 'name: "inference_step/StatefulPartitionedCall"' in body


def test_trace_compiled_model_includes_real_train_step(keras3_model):
    keras3_model.compile(optimizer="sgd", loss="mse")
    graph_def = graph_trace.trace_model_graph(keras3_model)
    functions = {f.signature.name: f for f in graph_def.library.function}
    (train,) = [f for name, f in functions.items() if "train_step" in name]
    (inference,) = [f for name, f in functions.items() if "inference_step" in name]
    assert "forward_train_step" not in train.signature.name
    assert any(node.name.startswith("gradient_tape/") for node in train.node_def)
    assert not any(node.name.startswith("gradient_tape/") for node in inference.node_def)
    placeholders = {node.name for node in graph_def.node if node.op == "Placeholder"}
    assert {
        "features",
        "target_0",
        "variables/bn/moving_mean",
        "variables/dense/kernel",
    } <= placeholders


def test_trace_uncompiled_model_uses_forward_pass(keras3_model):
    bn = keras3_model.get_layer("bn")
    before = bn.moving_mean.numpy().copy()
    graph_def = graph_trace.trace_model_graph(keras3_model)
    names = [f.signature.name for f in graph_def.library.function]
    assert any("forward_train_step" in name for name in names)
    assert np.array_equal(before, bn.moving_mean.numpy())
    (site,) = find_sites(graph_def).sites
    assert site.kind == KIND_SEPARATE_FUNCTIONS


def test_trace_needs_input_signature_without_inputs(keras):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.bn = keras.layers.BatchNormalization()

        def call(self, x, training=False):
            return self.bn(x, training=training)

    net = Net()
    with pytest.raises(ValueError, match="input_signature"):
        graph_trace.trace_model_graph(net)
    graph_def = graph_trace.trace_model_graph(
        net, input_signature=[tf.TensorSpec((None, 5), tf.float32)]
    )
    (site,) = find_sites(graph_def).sites
    assert site.kind == KIND_SEPARATE_FUNCTIONS
