"""GraphDefs with BatchNorm layers for the graph tests, built with real TensorFlow.

In-process builders (raw ops, no legacy Keras) plus ``legacy_graphs``:
graphs that need legacy Keras (``tf.compat.v1.layers``, tf-keras) are built
by this file run as a script in a fresh process with
``TF_USE_LEGACY_KERAS=1`` (``python tests/_bn_graphs.py OUTDIR``), once per
test session. Hand-made protos (``cyclic_graph``, ``missing_branch_graph``,
``nested_calls_graph``) cover inconsistent input no TensorFlow API produces.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import tensorflow as tf
from tensorboard.compat.proto import graph_pb2

from tb_bn_plugin.graph.load import load_graph_def

ROOT = Path(__file__).resolve().parents[1]


def names(refs):
    return [ref.name for ref in refs]


def as_tb_graph_def(graph_def) -> graph_pb2.GraphDef:
    return graph_pb2.GraphDef.FromString(graph_def.SerializeToString())


@contextlib.contextmanager
def control_flow_v1():
    """TF1 ``Switch``/``Merge`` control flow for graphs built inside the block."""
    was_v2 = tf.compat.v1.control_flow_v2_enabled()
    tf.compat.v1.disable_control_flow_v2()
    try:
        yield
    finally:
        if was_v2:
            tf.compat.v1.enable_control_flow_v2()


def build_seed004_graph(
    op_type: str = "FusedBatchNormV3",
    wire_updates: bool = True,
    freeze: bool = False,
    momentum: float = 0.99,
    control_flow_v2: bool = False,
):
    """Seed 004's graph: two fused BatchNorm ops behind a ``Switch`` on ``training``.

    Scope ``bn``: ``bn/cond/<op>`` (``is_training=True``, batch statistics) and
    ``bn/cond/<op>_1`` (moving statistics), merged by ``bn/cond/Merge``; an
    ``assign_sub`` update with ``momentum`` per statistic, a gradient-descent
    train op ``train`` (depending on the updates when ``wire_updates``).
    ``freeze`` folds the variables into constants like a frozen ``.pb``.
    ``control_flow_v2`` keeps TF 2.x's default for ``tf.compat.v1`` graphs: the
    cond becomes an ``If`` op calling branch functions, and taking gradients
    leaves the original branches in the library beside the ``*_rewritten``
    ones the ``If`` calls.
    """
    graph = tf.Graph()
    flow = contextlib.nullcontext() if control_flow_v2 else control_flow_v1()
    with flow, graph.as_default():
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
                    moving_mean, (moving_mean - mean) * (1.0 - momentum), name="AssignMovingAvg"
                ),
                tf.compat.v1.assign_sub(
                    moving_var, (moving_var - var) * (1.0 - momentum), name="AssignMovingAvg_1"
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


def two_seed004_layers(wire_updates: bool = False):
    """Two copies of seed 004's graph side by side: layer scopes ``a/bn`` and ``b/bn``."""
    seed004 = build_seed004_graph(wire_updates=wire_updates)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(seed004, name="a")
        tf.compat.v1.import_graph_def(seed004, name="b")
    return graph.as_graph_def()


def stateless_if_graph():
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


def graph_without_batchnorm():
    w = tf.Variable(tf.ones((3, 2)))
    concrete = tf.function(lambda x: tf.nn.relu(tf.matmul(x, w))).get_concrete_function(
        tf.TensorSpec((None, 3))
    )
    return concrete.graph.as_graph_def()


def keras3_bn_model(keras, momentum: float = 0.99):
    """``features -> dense -> bn -> head``, named ``net``, compiled with SGD and MSE."""
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(3, name="dense")(inputs)
    outputs = keras.layers.BatchNormalization(momentum=momentum, name="bn")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(outputs), name="net")
    model.compile(optimizer="sgd", loss="mse")
    return model


# ---------------------------------------------------------------------------
# Hand-made protos: inconsistent or absurd input


def node(graph, name, op, *inputs, **bool_attrs):
    added = graph.node.add(name=name, op=op, input=list(inputs))
    for key, value in bool_attrs.items():
        added.attr[key].b = value
    return added


def cyclic_graph():
    graph = graph_pb2.GraphDef()
    node(graph, "a", "Identity", "b")
    node(graph, "b", "Identity", "a")
    node(
        graph, "bn/FusedBatchNormV3", "FusedBatchNormV3", "a", "b", "b", "a", "a", is_training=True
    )
    node(graph, "bn/batchnorm/add", "AddV2", "bn/batchnorm/add")
    node(graph, "bn/batchnorm/Rsqrt", "Rsqrt", "bn/batchnorm/add")
    node(graph, "bn/AssignMovingAvg", "AssignSub", "a", "bn/AssignMovingAvg")
    return graph


def missing_branch_graph():
    graph = graph_pb2.GraphDef()
    node(graph, "training", "Placeholder")
    cond = node(graph, "bn/cond", "If", "training")
    cond.attr["then_branch"].func.name = "no_such_function"
    node(
        graph,
        "bn/FusedBatchNormV3",
        "FusedBatchNormV3",
        "bn/cond:x:1",
        "bad:port:z",
        is_training=False,
    )
    return graph


def nested_calls_graph(depth: int, exponential_avg_factor: float = 0.25):
    """A BatchNorm layer and its update in ``f<depth>``, called through ``f<depth-1>``... ``f0``.

    Each function runs its call as a control output and the top-level
    ``train`` op depends on the outermost call, so the update is wired; the
    fused op's ``exponential_avg_factor`` is ``1 - momentum``.
    """
    graph = graph_pb2.GraphDef()
    node(graph, "x", "Placeholder")
    call = node(graph, "call", "StatefulPartitionedCall", "x")
    call.attr["f"].func.name = "f0"
    node(graph, "train", "NoOp", "^call")
    for level in range(depth + 1):
        function = graph.library.function.add()
        function.signature.name = f"f{level}"
        function.signature.input_arg.add(name="x", type=1)
        if level < depth:
            inner = function.node_def.add(name="call", op="StatefulPartitionedCall", input=["x"])
            inner.attr["f"].func.name = f"f{level + 1}"
            function.control_ret["call"] = "call"
            continue
        fused = function.node_def.add(
            name="bn/FusedBatchNormV3", op="FusedBatchNormV3", input=["x", "x", "x", "x", "x"]
        )
        fused.attr["is_training"].b = True
        fused.attr["exponential_avg_factor"].f = exponential_avg_factor
        function.node_def.add(
            name="bn/AssignNewValue",
            op="AssignVariableOp",
            input=["x", "bn/FusedBatchNormV3:batch_mean:0"],
        )
        function.control_ret["bn/AssignNewValue"] = "bn/AssignNewValue"
    return graph


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
_legacy: dict[str, graph_pb2.GraphDef] = {}


def legacy_graphs(tmp_path_factory) -> dict[str, graph_pb2.GraphDef]:
    """The legacy-Keras graphs by name (``LEGACY_GRAPHS``, ``TFKERAS_SAVED_MODEL``), built once."""
    if not _legacy:
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
        for name in LEGACY_GRAPHS:
            _legacy[name] = graph_pb2.GraphDef.FromString((outdir / f"{name}.pb").read_bytes())
        _legacy[TFKERAS_SAVED_MODEL] = load_graph_def(outdir / TFKERAS_SAVED_MODEL)
    return _legacy


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


if __name__ == "__main__":
    _build_legacy_graphs(Path(sys.argv[1]))
