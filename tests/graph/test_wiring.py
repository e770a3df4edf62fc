"""``graph.wiring``: which update ops a layer has, whether they run each step, their momentum."""

from __future__ import annotations

import numpy as np
import pytest
from _bn_graphs import (
    build_seed004_graph,
    keras3_bn_model,
    legacy_graphs,
    names,
    nested_calls_graph,
)

from tb_bn_plugin.graph import wiring
from tb_bn_plugin.graph.index import IndexedGraphDef
from tb_bn_plugin.graph.model import OpRef
from tb_bn_plugin.graph.sites import find_sites
from tb_bn_plugin.training.graph_trace import trace_model_graph


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    return legacy_graphs(tmp_path_factory)


def one_site(graph_def):
    (site,) = find_sites(graph_def).sites
    return site


# ---------------------------------------------------------------------------
# TF1: assign_sub updates, wired into the train op or not


@pytest.mark.parametrize("wire_updates", [True, False])
def test_seed004_updates(wire_updates):
    site = one_site(build_seed004_graph(wire_updates=wire_updates))
    # Only the moving-average updates: not the variables' initializer assignments.
    assert names(site.update_ops) == ["bn/AssignMovingAvg", "bn/AssignMovingAvg_1"]
    assert site.updates_wired is wire_updates
    assert site.momentum == pytest.approx(0.99)
    assert site.moving_variables == ["bn/moving_mean", "bn/moving_variance"]


@pytest.mark.parametrize("momentum", [0.9, 1.0])
def test_momentum_from_assign_sub_constant(momentum):
    site = one_site(build_seed004_graph(momentum=momentum))
    assert site.momentum == pytest.approx(momentum)
    assert site.momentum_source.op == "Const"


def test_is_update_skips_initializers(legacy):
    top = IndexedGraphDef(legacy["seed001_unwired"]).top
    initializers = [node for node in top if node.name.endswith("/Assign")]
    assert {node.name for node in initializers} >= {"bn/moving_mean/Assign", "w/Assign"}
    assert not any(wiring.is_update(top, node) for node in initializers)
    assert wiring.is_update(top, top.node("bn/AssignMovingAvg"))


def test_seed001_unwired_update_ops(legacy):
    site = one_site(legacy["seed001_unwired"])
    assert names(site.update_ops) == ["bn/AssignMovingAvg", "bn/AssignMovingAvg_1"]
    assert {ref.op for ref in site.update_ops} == {"AssignSub"}
    assert site.updates_wired is False
    assert site.momentum == pytest.approx(0.99)
    assert site.momentum_source == OpRef("bn/cond_1/Const", "Const")


@pytest.mark.parametrize("name", ["seed001_train_op", "seed001_identity"])
def test_seed001_wired_update_ops(legacy, name):
    site = one_site(legacy[name])
    assert names(site.update_ops) == ["bn/AssignMovingAvg", "bn/AssignMovingAvg_1"]
    assert site.updates_wired is True


def test_unfused_update_ops(legacy):
    site = one_site(legacy["unfused_momentum_one"])
    assert names(site.update_ops) == ["bn/cond_2/AssignMovingAvg", "bn/cond_3/AssignMovingAvg"]


# ---------------------------------------------------------------------------
# TF2: resource variable updates in If branches and functions


def test_functional_if_unwired_update_ops(legacy):
    site = one_site(legacy["v2_if_unwired"])
    assert names(site.update_ops) == [
        "bn/AssignMovingAvg/AssignSubVariableOp",
        "bn/AssignMovingAvg_1/AssignSubVariableOp",
    ]
    assert site.updates_wired is False
    assert site.momentum == pytest.approx(0.99)


@pytest.mark.parametrize(
    "name, source, function",
    [
        # v1 cond: decay = 1 - momentum is a constant on the training branch.
        ("unfused_momentum_one", "bn/cond_2/AssignMovingAvg/decay", ""),
        # v2 cond: momentum is the output of a StatelessIf's then-branch constant.
        ("v2_if_momentum_one", "Const", "bn_cond_1_true"),
    ],
)
def test_momentum_one(legacy, name, source, function):
    site = one_site(legacy[name])
    assert site.momentum == 1.0
    assert site.momentum_source.name == source and site.momentum_source.op == "Const"
    assert site.momentum_source.function.startswith(function)
    assert site.updates_wired is True


def test_tfkeras_folds_momentum_into_the_fused_op(legacy):
    site = one_site(legacy["tfkeras_if"])
    assert names(site.update_ops) == ["net/bn/AssignNewValue", "net/bn/AssignNewValue_1"]
    assert site.updates_wired is True
    # exponential_avg_factor = 1 - momentum.
    assert site.momentum == pytest.approx(0.99)
    assert site.momentum_source == site.training_path[0]


def test_keras3_assign_updates(keras):
    model = keras3_bn_model(keras, momentum=0.9)
    bn = model.get_layer("bn")
    before = [v.numpy().copy() for v in (bn.moving_mean, bn.moving_variance)]
    site = one_site(trace_model_graph(model))
    # Tracing runs nothing: the moving statistics are untouched.
    assert all(
        np.array_equal(a, v.numpy())
        for a, v in zip(before, (bn.moving_mean, bn.moving_variance), strict=True)
    )
    (train_op,) = site.training_path
    assert [ref.op for ref in site.update_ops] == ["AssignVariableOp", "AssignVariableOp"]
    assert {ref.function for ref in site.update_ops} == {train_op.function}
    assert site.updates_wired is True
    assert site.momentum == pytest.approx(0.9)
    assert site.moving_variables == ["variables/bn/moving_mean", "variables/bn/moving_variance"]


# ---------------------------------------------------------------------------
# Call chains


@pytest.mark.parametrize("depth", [3, 2000])
def test_wired_through_nested_calls(depth):
    """Deep call chains need no Python recursion (2000 levels used to exhaust it)."""
    site = one_site(nested_calls_graph(depth))
    assert site.update_ops == [OpRef("bn/AssignNewValue", "AssignVariableOp", f"f{depth}")]
    assert site.updates_wired is True
    assert site.momentum == pytest.approx(0.75)
    assert site.momentum_source == OpRef("bn/FusedBatchNormV3", "FusedBatchNormV3", f"f{depth}")


def test_unwired_when_the_outermost_call_does_not_run():
    graph_def = nested_calls_graph(3)
    kept = [node for node in graph_def.node if node.name != "train"]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    assert one_site(graph_def).updates_wired is False


def test_unwired_when_a_function_drops_the_call():
    graph_def = nested_calls_graph(3)
    del graph_def.library.function[1].control_ret["call"]
    assert one_site(graph_def).updates_wired is False


def test_wiring_answers_are_memoised():
    graphs = IndexedGraphDef(nested_calls_graph(3))
    innermost = graphs.functions["f3"]
    updates = wiring.UpdateWiring()
    assert updates.wired(innermost, "bn/AssignNewValue", "bn/") is True
    # Every function on the chain was answered once and remembered.
    for level in range(3):
        assert updates.wired(graphs.functions[f"f{level}"], "call", "bn/") is True
