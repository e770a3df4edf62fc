"""``graph.index``: input coercion, node indexes, input parsing, call edges and input problems."""

from __future__ import annotations

import pytest
import tensorflow as tf
from _bn_graphs import (
    as_tb_graph_def,
    build_seed004_graph,
    missing_branch_graph,
    stateless_if_graph,
)
from tensorboard.compat.proto import graph_pb2, meta_graph_pb2

from tb_bn_plugin.graph.index import (
    GraphIndex,
    IndexedGraphDef,
    InputRef,
    MalformedGraphError,
    coerce_graph_def,
)


@pytest.fixture(scope="module")
def seed004():
    return build_seed004_graph()


# ---------------------------------------------------------------------------
# coerce_graph_def


def test_coerce_accepts_both_proto_classes_and_bytes(seed004):
    assert coerce_graph_def(seed004) is seed004  # TensorFlow's class
    tb_graph = as_tb_graph_def(seed004)
    assert coerce_graph_def(tb_graph) is tb_graph  # TensorBoard's class
    parsed = coerce_graph_def(seed004.SerializeToString())
    assert isinstance(parsed, graph_pb2.GraphDef)
    assert [node.name for node in parsed.node] == [node.name for node in seed004.node]
    assert len(coerce_graph_def(bytearray()).node) == 0  # no bytes: an empty graph


@pytest.mark.parametrize(
    "value, message",
    [
        (b"\xff\xfe this is not a protobuf \x00\x01", "not a serialized GraphDef"),
        (b"\x08\x01", "parse to an empty GraphDef"),
        (None, "expected a GraphDef, got NoneType"),
        (42, "expected a GraphDef, got int"),
        ("graph.pb", "expected a GraphDef, got str"),
        ({"node": []}, "expected a GraphDef, got dict"),
        (meta_graph_pb2.MetaGraphDef(), "expected a GraphDef, got MetaGraphDef"),
    ],
)
def test_coerce_rejects_what_is_not_a_graph(value, message):
    with pytest.raises(MalformedGraphError, match=message) as info:
        coerce_graph_def(value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------
# GraphIndex


def test_consumers_match_the_inputs(seed004):
    graph = GraphIndex("", seed004.node)
    assert len(graph) == len(seed004.node)
    expected: dict[str, list[str]] = {node.name: [] for node in seed004.node}
    for node in seed004.node:
        for ref in node.input:
            expected[ref.lstrip("^").split(":")[0]].append(node.name)
    assert {name: graph.consumers(name) for name in expected} == expected
    assert graph.consumers("no such node") == []
    assert graph.node("no such node") is None
    assert graph.dangling == [] and graph.duplicates == []


def test_parse_input_references():
    graph = GraphIndex("f", [])
    assert graph.parse("a") == InputRef("a", 0, False)
    assert graph.parse("a:2") == InputRef("a", 2, False)
    assert graph.parse("^a") == InputRef("a", -1, True)
    # In functions: node:output_arg:index; fused BatchNorm outputs by name.
    assert graph.parse("bn:batch_mean:0") == InputRef("bn", 1, False)
    assert graph.parse("bn:batch_variance:0") == InputRef("bn", 2, False)
    assert graph.parse("call:output:3") == InputRef("call", 3, False)
    # Malformed ports read as 0 instead of failing the analysis.
    assert graph.parse("a:z") == InputRef("a", 0, False)
    assert graph.parse("a:²") == InputRef("a", 0, False)
    assert graph.parse("a:" + "9" * 5000) == InputRef("a", 0, False)


def test_tensor_name_follows_identities(seed004):
    graph = GraphIndex("", seed004.node)
    (predicate,) = graph.data_inputs("bn/cond/pred_id")
    assert graph.tensor_name(predicate) == "training:0"
    switch_predicate = graph.data_inputs("bn/cond/FusedBatchNormV3/Switch")[1]
    assert switch_predicate.source == "bn/cond/pred_id"
    assert graph.tensor_name(switch_predicate) == "training:0"
    assert graph.tensor_name(InputRef("missing", 0, False)) == "missing"


def test_live_nodes_of_a_function():
    variable = tf.Variable(1.0)

    @tf.function
    def inner(x):
        variable.assign_add(x, name="update")
        tf.math.exp(x, name="unused")
        return x * 2.0

    outer = tf.function(lambda x: inner(x) + 1.0)
    graph_def = outer.get_concrete_function(tf.TensorSpec((), tf.float32)).graph.as_graph_def()
    (function,) = IndexedGraphDef(graph_def).functions.values()
    live = function.live()
    assert "update" in function.sinks and live >= function.sinks
    assert "unused" in function and "unused" not in live
    for name in live:  # closed under inputs
        assert {ref.source for ref in function.inputs(name) if ref.source in function} <= live
    (caller,) = function.callers
    assert caller[0].function == "" and caller[1].op in (
        "PartitionedCall",
        "StatefulPartitionedCall",
    )


# ---------------------------------------------------------------------------
# IndexedGraphDef


def test_call_edges_link_if_branches():
    graphs = IndexedGraphDef(stateless_if_graph())
    cond = next(node for node in graphs.top if node.op == "StatelessIf")
    for attr in ("then_branch", "else_branch"):
        callers = graphs.functions[cond.attr[attr].func.name].callers
        assert [(graph.function, caller.name, how) for graph, caller, how in callers] == [
            ("", cond.name, attr)
        ]
    assert graphs.node_count == sum(len(graph) for graph in graphs.graphs)
    assert graphs.problems == []


def test_problems_dangling_duplicate_and_missing_functions(seed004):
    graph_def = as_tb_graph_def(seed004)
    kept = [node for node in graph_def.node if node.name != "bn/cond/FusedBatchNormV3/Switch"]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    graph_def.node.add().CopyFrom(kept[0])
    problems = IndexedGraphDef(graph_def).problems
    assert len(problems) == 2
    assert problems[0] == (
        "2 input(s) name missing nodes: bn/cond/FusedBatchNormV3 <- "
        "bn/cond/FusedBatchNormV3/Switch; gradients/bn/cond/FusedBatchNormV3_grad/"
        "FusedBatchNormGradV3 <- bn/cond/FusedBatchNormV3/Switch"
    )
    assert problems[1] == f"duplicate node names: {kept[0].name}"
    (missing,) = IndexedGraphDef(missing_branch_graph()).problems[-1:]
    assert missing == "1 call(s) to functions not in the library: bn/cond calls no_such_function"
