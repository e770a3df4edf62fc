"""Tests for ``tb_bn_plugin.graph.analysis`` on graphs built with real TensorFlow.

Graphs that need legacy Keras (``tf.compat.v1.layers``, tf-keras) are built by
this file run as a script in a fresh process with ``TF_USE_LEGACY_KERAS=1``
(``python tests/test_graph_analysis.py OUTDIR``), once per test session; the
analysis runs in the test process.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.compat.proto import graph_pb2

from tb_bn_plugin.graph import analysis
from tb_bn_plugin.graph.analysis import analyze_graph, report_graph
from tb_bn_plugin.graph.load import load_graph_def
from tb_bn_plugin.training.graph_trace import trace_model_graph

ROOT = Path(__file__).resolve().parents[2]


def _names(refs):
    return [ref.name for ref in refs]


def _codes(report):
    return [finding.code for finding in report.findings]


def _as_tb_graph_def(graph_def) -> graph_pb2.GraphDef:
    return graph_pb2.GraphDef.FromString(graph_def.SerializeToString())


# ---------------------------------------------------------------------------
# Graph builders (in-process: raw ops, no legacy Keras needed)


@pytest.fixture
def control_flow_v1():
    """TF1 ``Switch``/``Merge`` control flow for graphs built inside the test."""
    tf.compat.v1.disable_control_flow_v2()
    yield
    tf.compat.v1.enable_control_flow_v2()


def build_seed004_graph(
    op_type: str = "FusedBatchNormV3", wire_updates: bool = True, freeze: bool = False
):
    """Seed 004's graph: two fused BatchNorm ops behind a ``Switch`` on ``training``.

    Scope ``bn``: ``bn/cond/<op>`` (``is_training=True``, batch statistics) and
    ``bn/cond/<op>_1`` (moving statistics), merged by ``bn/cond/Merge``; a
    momentum 0.99 ``assign_sub`` update per statistic, a gradient-descent
    train op ``train`` (depending on the updates when ``wire_updates``).
    ``freeze`` folds the variables into constants like a frozen ``.pb``.
    Needs the ``control_flow_v1`` fixture.
    """
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4, 4, 3), name="input_node")
        training = tf.compat.v1.placeholder(tf.bool, (), name="training")
        with tf.compat.v1.variable_scope("bn", use_resource=False):
            gamma = tf.compat.v1.get_variable("gamma", initializer=tf.ones(3))
            beta = tf.compat.v1.get_variable("beta", initializer=tf.zeros(3))
            moving_mean = tf.compat.v1.get_variable(
                "moving_mean", initializer=tf.zeros(3), trainable=False
            )
            moving_var = tf.compat.v1.get_variable(
                "moving_variance", initializer=tf.ones(3), trainable=False
            )
            fused = getattr(tf.raw_ops, op_type)
            empty = tf.constant([], tf.float32)

            def train_branch():
                y, mean, var = fused(
                    x=x, scale=gamma, offset=beta, mean=empty, variance=empty, is_training=True
                )[:3]
                return y, mean, var

            def inference_branch():
                y = fused(
                    x=x,
                    scale=gamma,
                    offset=beta,
                    mean=moving_mean,
                    variance=moving_var,
                    is_training=False,
                )[0]
                return y, tf.identity(moving_mean), tf.identity(moving_var)

            y, mean, var = tf.compat.v1.cond(training, train_branch, inference_branch)
            updates = [
                tf.compat.v1.assign_sub(
                    moving_mean, (moving_mean - mean) * (1.0 - 0.99), name="AssignMovingAvg"
                ),
                tf.compat.v1.assign_sub(
                    moving_var, (moving_var - var) * (1.0 - 0.99), name="AssignMovingAvg_1"
                ),
            ]
        loss = tf.reduce_mean(tf.square(y))
        with tf.control_dependencies(updates if wire_updates else []):
            tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss, name="train")
        if not freeze:
            return graph.as_graph_def()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), ["bn/cond/Merge"]
            )


def _stateless_if_graph():
    """A TF2 frozen-style graph: ``StatelessIf`` over fused ops fed by constants."""
    scale, offset = tf.ones(3), tf.zeros(3)
    moving_mean, moving_var = tf.constant([0.5, 0.5, 0.5]), tf.constant([2.0, 2.0, 2.0])

    @tf.function
    def net(x, is_training):
        def train():
            return tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=scale,
                offset=offset,
                mean=moving_mean,
                variance=moving_var,
                exponential_avg_factor=0.1,
                is_training=True,
            )[0]

        def infer():
            return tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=scale,
                offset=offset,
                mean=moving_mean,
                variance=moving_var,
                is_training=False,
            )[0]

        with tf.name_scope("block/bn"):
            return tf.cond(is_training, train, infer)

    concrete = net.get_concrete_function(
        tf.TensorSpec((None, 2, 2, 3), tf.float32, name="x"),
        tf.TensorSpec((), tf.bool, name="is_training"),
    )
    return concrete.graph.as_graph_def()


# ---------------------------------------------------------------------------
# Legacy-Keras graphs, built in a subprocess by this file run as a script

LEGACY_GRAPHS = (
    "seed001_unwired",
    "seed001_train_op",
    "seed001_identity",
    "unfused_momentum_one",
    "v2_if_unwired",
    "v2_if_momentum_one",
    "tfkeras_if",
)
TFKERAS_SAVED_MODEL = "tfkeras_saved_model"


def _legacy_layers_graph(rank: int, wiring: str | None, momentum: float = 0.99):
    """Seed 001: ``tf.compat.v1.layers.batch_normalization`` with a ``training`` placeholder.

    ``wiring``: ``None`` (the bug), ``"train_op"`` (train op built under the
    UPDATE_OPS control dependency) or ``"identity"`` (the seed's own fix).
    """
    graph = tf.Graph()
    with graph.as_default():
        shape = (None, 2, 2, 3) if rank == 4 else (None, 3)
        x = tf.compat.v1.placeholder(tf.float32, shape, name="X")
        training = tf.compat.v1.placeholder(tf.bool, (), name="training")
        w = tf.compat.v1.get_variable("w", initializer=tf.constant(1.0))
        out = tf.compat.v1.layers.batch_normalization(
            x * w, training=training, momentum=momentum, name="bn"
        )
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        if wiring == "identity":
            with tf.control_dependencies(update_ops):
                out = tf.identity(out, name="output")
        loss = tf.reduce_mean(tf.square(out))
        with tf.control_dependencies(update_ops if wiring == "train_op" else []):
            tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss, name="train")
    return graph.as_graph_def()


def _tfkeras_if_graph(saved_model_dir: Path):
    """tf-keras model called in a ``tf.function`` with a tensor ``training`` argument.

    Also saves the model as a SavedModel, whose library holds the layer's
    training and inference calls as separate functions.
    """
    import tf_keras

    model = tf_keras.Sequential(
        [
            tf_keras.layers.Conv2D(2, 1, input_shape=(4, 4, 3), name="conv"),
            tf_keras.layers.BatchNormalization(name="bn"),
        ],
        name="net",
    )
    step = tf.function(lambda x, training: model(x, training=training))
    concrete = step.get_concrete_function(
        tf.TensorSpec((None, 4, 4, 3), tf.float32, name="x"),
        tf.TensorSpec((), tf.bool, name="training"),
    )
    model.save(str(saved_model_dir), save_format="tf")
    return concrete.graph.as_graph_def()


def _build_legacy_graphs(outdir: Path) -> None:
    assert tf.keras.__name__.startswith("tf_keras"), "needs TF_USE_LEGACY_KERAS=1"
    tf.compat.v1.disable_control_flow_v2()
    tf.compat.v1.disable_resource_variables()  # TF1 defaults, as in seed 001
    graphs = {
        "seed001_unwired": _legacy_layers_graph(4, None),
        "seed001_train_op": _legacy_layers_graph(4, "train_op"),
        "seed001_identity": _legacy_layers_graph(4, "identity"),
        "unfused_momentum_one": _legacy_layers_graph(2, "train_op", momentum=1.0),
    }
    tf.compat.v1.enable_control_flow_v2()
    tf.compat.v1.enable_resource_variables()
    graphs["v2_if_unwired"] = _legacy_layers_graph(4, None)
    graphs["v2_if_momentum_one"] = _legacy_layers_graph(4, "train_op", momentum=1.0)
    graphs["tfkeras_if"] = _tfkeras_if_graph(outdir / TFKERAS_SAVED_MODEL)
    for name, graph_def in graphs.items():
        (outdir / f"{name}.pb").write_bytes(graph_def.SerializeToString())


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("legacy_graphs")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, __file__, str(outdir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    graphs = {
        name: graph_pb2.GraphDef.FromString((outdir / f"{name}.pb").read_bytes())
        for name in LEGACY_GRAPHS
    }
    graphs[TFKERAS_SAVED_MODEL] = load_graph_def(outdir / TFKERAS_SAVED_MODEL)
    return graphs


# ---------------------------------------------------------------------------
# TF1 control flow v1: Switch/Merge (seed 004)


@pytest.mark.parametrize("op_type", ["FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"])
def test_switch_merge_fused_ops(control_flow_v1, op_type):
    graph_def = build_seed004_graph(op_type)
    (site,) = analyze_graph(graph_def)
    assert site.name == "bn"
    assert site.kind == analysis.KIND_SWITCH_MERGE
    assert site.training_path == [analysis.OpRef(f"bn/cond/{op_type}", op_type)]
    assert site.inference_path == [analysis.OpRef(f"bn/cond/{op_type}_1", op_type)]
    assert site.predicate == "training:0"
    assert site.switch_op == analysis.OpRef(f"bn/cond/{op_type}/Switch", "Switch")
    assert site.merge_op == analysis.OpRef("bn/cond/Merge", "Merge")
    assert _names(site.update_ops) == ["bn/AssignMovingAvg", "bn/AssignMovingAvg_1"]
    assert site.updates_wired is True
    assert site.momentum == pytest.approx(0.99)
    assert site.moving_variables == ["bn/moving_mean", "bn/moving_variance"]
    assert site.findings == []


def test_gradient_ops_are_not_sites(control_flow_v1):
    graph_def = build_seed004_graph("FusedBatchNormV3")
    ops = {node.op for node in graph_def.node}
    assert "FusedBatchNormGradV3" in ops
    sites = analyze_graph(graph_def)
    assert [site.name for site in sites] == ["bn"]
    path_ops = {ref.op for site in sites for ref in site.training_path + site.inference_path}
    assert path_ops == {"FusedBatchNormV3"}


def test_frozen_seed004_graph(control_flow_v1):
    graph_def = build_seed004_graph("FusedBatchNorm", freeze=True)
    assert "Switch" in {node.op for node in graph_def.node}
    report = report_graph(graph_def)
    (site,) = report.sites
    assert site.kind == analysis.KIND_SWITCH_MERGE
    assert _names(site.training_path) == ["bn/cond/FusedBatchNorm"]
    assert _names(site.inference_path) == ["bn/cond/FusedBatchNorm_1"]
    assert site.predicate == "training:0"
    # Freezing keeps only what bn/cond/Merge needs: the updates are gone.
    assert site.update_ops == [] and site.updates_wired is None
    assert site.moving_variables == ["bn/moving_mean", "bn/moving_variance"]
    assert site.findings == [analysis.NO_UPDATE_OPS]
    assert _codes(report) == [analysis.NO_UPDATE_OPS]
    assert report.findings[0].severity == "info"


def test_unwired_updates_in_raw_graph(control_flow_v1):
    (site,) = analyze_graph(build_seed004_graph(wire_updates=False))
    assert site.updates_wired is False
    assert site.findings == [analysis.UPDATE_OPS_NOT_WIRED]


# ---------------------------------------------------------------------------
# Seed 001: update ops present but never run; momentum 1


def test_seed001_unwired_update_ops(legacy):
    report = report_graph(legacy["seed001_unwired"])
    (site,) = report.sites
    assert site.name == "bn"
    assert site.kind == analysis.KIND_SWITCH_MERGE
    assert _names(site.training_path) == ["bn/cond/FusedBatchNormV3"]
    assert _names(site.inference_path) == ["bn/cond/FusedBatchNormV3_1"]
    assert _names(site.update_ops) == ["bn/AssignMovingAvg", "bn/AssignMovingAvg_1"]
    assert {ref.op for ref in site.update_ops} == {"AssignSub"}
    assert site.updates_wired is False
    assert site.momentum == pytest.approx(0.99)
    assert site.momentum_source == analysis.OpRef("bn/cond_1/Const", "Const")
    assert site.findings == [analysis.UPDATE_OPS_NOT_WIRED]
    (finding,) = report.findings
    assert finding.code == analysis.UPDATE_OPS_NOT_WIRED
    assert finding.severity == "warning"
    assert finding.sites == ("bn",)
    assert "bn/AssignMovingAvg" in finding.evidence[0]
    assert "tf.control_dependencies" in finding.fix


@pytest.mark.parametrize("name", ["seed001_train_op", "seed001_identity"])
def test_seed001_wired_update_ops(legacy, name):
    report = report_graph(legacy[name])
    (site,) = report.sites
    assert _names(site.update_ops) == ["bn/AssignMovingAvg", "bn/AssignMovingAvg_1"]
    assert site.updates_wired is True
    assert site.findings == []
    assert report.findings == []


def test_functional_if_unwired_update_ops(legacy):
    graph_def = legacy["v2_if_unwired"]
    (site,) = analyze_graph(graph_def)
    assert site.kind == analysis.KIND_FUNCTIONAL_IF
    assert site.switch_op.op == "If" and site.switch_op.name == "bn/cond"
    assert site.predicate == "training:0"
    assert site.merge_op is None
    (train_op,) = site.training_path
    (infer_op,) = site.inference_path
    assert train_op.op == infer_op.op == "FusedBatchNormV3"
    branches = next(node for node in graph_def.node if node.name == "bn/cond").attr
    assert train_op.function == branches["then_branch"].func.name
    assert infer_op.function == branches["else_branch"].func.name
    assert _names(site.update_ops) == [
        "bn/AssignMovingAvg/AssignSubVariableOp",
        "bn/AssignMovingAvg_1/AssignSubVariableOp",
    ]
    assert site.updates_wired is False
    assert site.momentum == pytest.approx(0.99)
    assert site.findings == [analysis.UPDATE_OPS_NOT_WIRED]


@pytest.mark.parametrize(
    "name, kind, source, function",
    [
        # v1 cond: decay = 1 - momentum is a constant on the training branch.
        ("unfused_momentum_one", analysis.KIND_SWITCH_MERGE, "bn/cond_2/AssignMovingAvg/decay", ""),
        # v2 cond: momentum is the output of a StatelessIf's then-branch constant.
        ("v2_if_momentum_one", analysis.KIND_FUNCTIONAL_IF, "Const", "bn_cond_1_true"),
    ],
)
def test_momentum_one(legacy, name, kind, source, function):
    report = report_graph(legacy[name])
    (site,) = report.sites
    assert site.kind == kind
    assert site.momentum == 1.0
    assert site.momentum_source.name == source and site.momentum_source.op == "Const"
    assert site.momentum_source.function.startswith(function)
    assert site.updates_wired is True
    assert site.findings == [analysis.MOMENTUM_ONE]
    (finding,) = report.findings
    assert finding.code == analysis.MOMENTUM_ONE and finding.severity == "warning"
    assert finding.evidence == (f"bn: momentum 1 read from {site.momentum_source}",)


def test_unfused_switched_statistics(legacy):
    """Non-fused tf.layers: one normalisation, statistics chosen by Switch/Merge."""
    (site,) = analyze_graph(legacy["unfused_momentum_one"])
    assert site.training_path == [analysis.OpRef("bn/moments/variance", "Mean")]
    assert site.inference_path == [analysis.OpRef("bn/moving_variance", "VariableV2")]
    assert site.switch_op == analysis.OpRef("bn/cond_1/Switch_1", "Switch")
    assert site.merge_op == analysis.OpRef("bn/cond_1/Merge", "Merge")
    assert site.predicate == "training:0"
    assert _names(site.update_ops) == ["bn/cond_2/AssignMovingAvg", "bn/cond_3/AssignMovingAvg"]


# ---------------------------------------------------------------------------
# TF2 functional control flow: If / StatelessIf


def test_tfkeras_functional_if(legacy):
    graph_def = legacy["tfkeras_if"]
    (site,) = analyze_graph(graph_def)
    assert site.name == "net/bn"
    assert site.kind == analysis.KIND_FUNCTIONAL_IF
    assert site.switch_op == analysis.OpRef("net/bn/cond", "If")
    assert site.predicate == "training:0"
    assert (
        _names(site.training_path)
        == _names(site.inference_path)
        == ["net/bn/cond/FusedBatchNormV3"]
    )
    assert site.training_path[0].function.startswith("net_bn_cond_true")
    assert site.inference_path[0].function.startswith("net_bn_cond_false")
    assert _names(site.update_ops) == ["net/bn/AssignNewValue", "net/bn/AssignNewValue_1"]
    assert site.updates_wired is True
    # tf-keras folds the average into the fused op: exponential_avg_factor = 1 - momentum.
    assert site.momentum == pytest.approx(0.99)
    assert site.momentum_source == site.training_path[0]
    assert site.findings == []


def test_tfkeras_saved_model_separate_functions(legacy):
    """A tf-keras SavedModel traces the layer's training and inference calls separately."""
    sites = {site.name: site for site in analyze_graph(legacy[TFKERAS_SAVED_MODEL])}
    site = sites["bn"]  # named after __inference_bn_layer_call_and_return_conditional_losses_N
    assert site.kind == analysis.KIND_SEPARATE_FUNCTIONS
    assert {ref.op for ref in site.training_path + site.inference_path} == {"FusedBatchNormV3"}
    assert not {r.function for r in site.training_path} & {r.function for r in site.inference_path}
    assert {ref.name for ref in site.update_ops} == {"AssignNewValue", "AssignNewValue_1"}
    assert site.updates_wired is True
    assert site.momentum == pytest.approx(0.99)
    # The model's own inference function calls the layer with moving statistics only.
    assert sites["net/bn"].kind == analysis.KIND_UNSWITCHED and sites["net/bn"].training_path == []


def test_stateless_if():
    graph_def = _stateless_if_graph()
    (site,) = analyze_graph(graph_def)
    assert site.name == "block/bn"
    assert site.kind == analysis.KIND_FUNCTIONAL_IF
    assert site.switch_op == analysis.OpRef("block/bn/cond", "StatelessIf")
    assert site.predicate == "is_training:0"
    assert [ref.op for ref in site.training_path] == ["FusedBatchNormV3"]
    assert site.training_path[0].function != site.inference_path[0].function
    assert site.findings == [analysis.NO_UPDATE_OPS]


# ---------------------------------------------------------------------------
# Keras 3: training and inference as separate traced functions


@pytest.fixture
def keras3_model(keras):
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(3, name="dense")(inputs)
    outputs = keras.layers.BatchNormalization(momentum=0.9, name="bn")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(outputs), name="net")
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_keras3_separate_functions(keras3_model):
    bn = keras3_model.get_layer("bn")
    before = [v.numpy().copy() for v in (bn.moving_mean, bn.moving_variance)]
    graph_def = trace_model_graph(keras3_model)
    # Tracing runs nothing: the moving statistics and the optimizer are untouched.
    assert all(
        np.array_equal(a, v.numpy())
        for a, v in zip(before, (bn.moving_mean, bn.moving_variance), strict=True)
    )
    assert int(keras3_model.optimizer.iterations.numpy()) == 0

    (site,) = analyze_graph(graph_def)
    assert re.fullmatch(r"net(_\d+)?/bn(_\d+)?", site.name)  # Keras numbers traced scopes
    assert site.kind == analysis.KIND_SEPARATE_FUNCTIONS
    assert site.switch_op is None and site.predicate is None
    (train_op,) = site.training_path
    (infer_op,) = site.inference_path
    assert train_op.name.endswith("/batchnorm/Rsqrt") and infer_op.name.endswith("/batchnorm/Rsqrt")
    assert "train_step" in train_op.function and "inference_step" in infer_op.function
    assert [ref.op for ref in site.update_ops] == ["AssignVariableOp", "AssignVariableOp"]
    assert {ref.function for ref in site.update_ops} == {train_op.function}
    assert site.updates_wired is True
    assert site.momentum == pytest.approx(0.9)
    assert site.moving_variables == ["variables/bn/moving_mean", "variables/bn/moving_variance"]
    assert site.findings == []


# ---------------------------------------------------------------------------
# No BatchNorm, malformed input, huge graphs


def test_graph_without_batchnorm():
    w = tf.Variable(tf.ones((3, 2)))
    concrete = tf.function(lambda x: tf.nn.relu(tf.matmul(x, w))).get_concrete_function(
        tf.TensorSpec((None, 3))
    )
    report = report_graph(concrete.graph.as_graph_def())
    assert report.sites == []
    assert _codes(report) == [analysis.NO_BATCHNORM]
    assert report.node_count > 0


def _node(graph, name, op, *inputs, **bool_attrs):
    node = graph.node.add(name=name, op=op, input=list(inputs))
    for key, value in bool_attrs.items():
        node.attr[key].b = value
    return node


def _cyclic_graph():
    graph = graph_pb2.GraphDef()
    _node(graph, "a", "Identity", "b")
    _node(graph, "b", "Identity", "a")
    _node(
        graph, "bn/FusedBatchNormV3", "FusedBatchNormV3", "a", "b", "b", "a", "a", is_training=True
    )
    _node(graph, "bn/batchnorm/add", "AddV2", "bn/batchnorm/add")
    _node(graph, "bn/batchnorm/Rsqrt", "Rsqrt", "bn/batchnorm/add")
    _node(graph, "bn/AssignMovingAvg", "AssignSub", "a", "bn/AssignMovingAvg")
    return graph


def _missing_branch_graph():
    graph = graph_pb2.GraphDef()
    _node(graph, "training", "Placeholder")
    node = _node(graph, "bn/cond", "If", "training")
    node.attr["then_branch"].func.name = "no_such_function"
    _node(
        graph,
        "bn/FusedBatchNormV3",
        "FusedBatchNormV3",
        "bn/cond:x:1",
        "bad:port:z",
        is_training=False,
    )
    return graph


def test_garbage_bytes():
    assert analyze_graph(b"\xff\xfe this is not a protobuf \x00\x01") == []
    report = report_graph(b"\xff\xfe this is not a protobuf \x00\x01")
    (finding,) = report.findings
    assert finding.code == analysis.MALFORMED_GRAPH and finding.severity == "error"
    assert "not a serialized GraphDef" in finding.evidence[0]


@pytest.mark.parametrize("value", [None, 42, "graph.pb", {"node": []}])
def test_not_a_graph(value):
    report = report_graph(value)
    assert report.sites == []
    assert _codes(report) == [analysis.MALFORMED_GRAPH]


def test_dangling_inputs(control_flow_v1):
    graph_def = _as_tb_graph_def(build_seed004_graph())
    kept = [node for node in graph_def.node if node.name != "bn/cond/FusedBatchNormV3/Switch"]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    report = report_graph(graph_def)
    (site,) = report.sites
    assert _names(site.training_path) == ["bn/cond/FusedBatchNormV3"]
    assert analysis.MALFORMED_GRAPH in _codes(report)
    evidence = " ".join(
        next(f for f in report.findings if f.code == analysis.MALFORMED_GRAPH).evidence
    )
    assert "bn/cond/FusedBatchNormV3 <- bn/cond/FusedBatchNormV3/Switch" in evidence


def test_cycles_and_bad_references_do_not_crash():
    report = report_graph(_cyclic_graph())
    (site,) = report.sites
    assert site.name == "bn"
    assert _names(site.training_path) == ["bn/FusedBatchNormV3"]
    report = report_graph(_missing_branch_graph())
    (site,) = report.sites
    assert _names(site.inference_path) == ["bn/FusedBatchNormV3"]
    evidence = " ".join(
        next(f for f in report.findings if f.code == analysis.MALFORMED_GRAPH).evidence
    )
    assert "no_such_function" in evidence


def test_huge_graph():
    spec = importlib.util.spec_from_file_location(
        "bench_graph_analysis", ROOT / "benchmarks" / "graph_analysis.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    graph_def, layers = bench.synthetic_graph_def(20_000)
    assert len(graph_def.node) >= 20_000
    sites = analyze_graph(graph_def)
    assert len(sites) == layers
    assert {site.kind for site in sites} == {analysis.KIND_SWITCH_MERGE}
    assert all(site.updates_wired and site.momentum == pytest.approx(0.99) for site in sites)
    assert sites[0].name == "block0/bn" and _names(sites[0].inference_path) == [
        "block0/bn/cond/FusedBatchNormV3_1"
    ]


def test_to_json_is_json_safe(control_flow_v1):
    import json

    report = report_graph(build_seed004_graph(wire_updates=False))
    data = json.loads(json.dumps(report.to_json()))
    (site,) = data["sites"]
    assert site["kind"] == "switch_merge"
    assert site["training_path"] == [
        {"name": "bn/cond/FusedBatchNormV3", "op": "FusedBatchNormV3", "function": ""}
    ]
    assert site["findings"] == ["update-ops-not-wired"]
    assert data["findings"][0]["code"] == "update-ops-not-wired"


if __name__ == "__main__":
    _build_legacy_graphs(Path(sys.argv[1]))
