"""``graph.switch``: what selects a BatchNorm layer's training vs inference path.

v1 ``Switch``/``Merge`` (TF1 control flow, seed 004 and seed 001), functional
``If``/``StatelessIf`` (TF2 control flow, tf-keras), and tracing values back
through them. Legacy-Keras graphs come from ``_bn_graphs.legacy_graphs``.
"""

from __future__ import annotations

import pytest
from _bn_graphs import build_seed004_graph, legacy_graphs, names, stateless_if_graph

from tb_bn_plugin.graph import switch
from tb_bn_plugin.graph.index import IndexedGraphDef, InputRef
from tb_bn_plugin.graph.model import (
    KIND_FUNCTIONAL_IF,
    KIND_SWITCH_MERGE,
    OpRef,
)
from tb_bn_plugin.graph.sites import find_sites


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    return legacy_graphs(tmp_path_factory)


def one_site(graph_def):
    (site,) = find_sites(graph_def).sites
    return site


# ---------------------------------------------------------------------------
# TF1 control flow v1: Switch/Merge


@pytest.mark.parametrize("op_type", ["FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"])
def test_switch_merge_fused_ops(op_type):
    site = one_site(build_seed004_graph(op_type))
    assert site.name == "bn"
    assert site.kind == KIND_SWITCH_MERGE
    assert site.training_path == [OpRef(f"bn/cond/{op_type}", op_type)]
    assert site.inference_path == [OpRef(f"bn/cond/{op_type}_1", op_type)]
    assert site.predicate == "training:0"
    assert site.switch_op == OpRef(f"bn/cond/{op_type}/Switch", "Switch")
    assert site.merge_op == OpRef("bn/cond/Merge", "Merge")


def test_context_of_each_branch():
    graphs = IndexedGraphDef(build_seed004_graph())
    train = switch.context_of(graphs.top, "bn/cond/FusedBatchNormV3")
    infer = switch.context_of(graphs.top, "bn/cond/FusedBatchNormV3_1")
    assert train.branch is True and infer.branch is False
    assert train.predicate == infer.predicate == "training:0"
    assert train.merge == infer.merge == OpRef("bn/cond/Merge", "Merge")
    assert switch.context_of(graphs.top, "input_node") is None
    assert switch.find_merge(graphs.top, "bn/moving_mean") is None


def test_trace_through_merge_records_the_branch():
    graphs = IndexedGraphDef(build_seed004_graph())
    sources = list(switch.trace(graphs.functions, graphs.top, InputRef("bn/cond/Merge", 0, False)))
    by_branch = {source.context.branch: source.name for source in sources}
    assert by_branch == {True: "bn/cond/FusedBatchNormV3", False: "bn/cond/FusedBatchNormV3_1"}
    assert all(source.context.merge == OpRef("bn/cond/Merge", "Merge") for source in sources)
    # The batch mean output (port 1) of the training branch, via Merge_1.
    (mean,) = [
        s
        for s in switch.trace(graphs.functions, graphs.top, InputRef("bn/cond/Merge_1", 0, False))
        if s.context.branch
    ]
    assert (mean.name, mean.port) == ("bn/cond/FusedBatchNormV3", 1)


def test_unfused_switched_statistics(legacy):
    """Non-fused tf.layers: one normalisation, statistics chosen by Switch/Merge."""
    site = one_site(legacy["unfused_momentum_one"])
    assert site.kind == KIND_SWITCH_MERGE
    assert site.training_path == [OpRef("bn/moments/variance", "Mean")]
    assert site.inference_path == [OpRef("bn/moving_variance", "VariableV2")]
    assert site.switch_op == OpRef("bn/cond_1/Switch_1", "Switch")
    assert site.merge_op == OpRef("bn/cond_1/Merge", "Merge")
    assert site.predicate == "training:0"


def test_seed001_switch_merge(legacy):
    site = one_site(legacy["seed001_unwired"])
    assert site.name == "bn"
    assert site.kind == KIND_SWITCH_MERGE
    assert names(site.training_path) == ["bn/cond/FusedBatchNormV3"]
    assert names(site.inference_path) == ["bn/cond/FusedBatchNormV3_1"]


# ---------------------------------------------------------------------------
# TF2 functional control flow: If / StatelessIf


def test_functional_if(legacy):
    graph_def = legacy["v2_if_unwired"]
    site = one_site(graph_def)
    assert site.kind == KIND_FUNCTIONAL_IF
    assert site.switch_op.op == "If" and site.switch_op.name == "bn/cond"
    assert site.predicate == "training:0"
    assert site.merge_op is None
    (train_op,) = site.training_path
    (infer_op,) = site.inference_path
    assert train_op.op == infer_op.op == "FusedBatchNormV3"
    branches = next(node for node in graph_def.node if node.name == "bn/cond").attr
    assert train_op.function == branches["then_branch"].func.name
    assert infer_op.function == branches["else_branch"].func.name


def test_tfkeras_functional_if(legacy):
    site = one_site(legacy["tfkeras_if"])
    assert site.name == "net/bn"
    assert site.kind == KIND_FUNCTIONAL_IF
    assert site.switch_op == OpRef("net/bn/cond", "If")
    assert site.predicate == "training:0"
    assert (
        names(site.training_path) == names(site.inference_path) == ["net/bn/cond/FusedBatchNormV3"]
    )
    assert site.training_path[0].function.startswith("net_bn_cond_true")
    assert site.inference_path[0].function.startswith("net_bn_cond_false")


def test_stateless_if():
    site = one_site(stateless_if_graph())
    assert site.name == "block/bn"
    assert site.kind == KIND_FUNCTIONAL_IF
    assert site.switch_op == OpRef("block/bn/cond", "StatelessIf")
    assert site.predicate == "is_training:0"
    assert [ref.op for ref in site.training_path] == ["FusedBatchNormV3"]
    assert site.training_path[0].function != site.inference_path[0].function


def test_stat_kind_of_function_arguments():
    """Moving statistics enter If branches as arguments: constants here, read back to callers."""
    graphs = IndexedGraphDef(stateless_if_graph())
    cond = next(node for node in graphs.top if node.op == "StatelessIf")
    branch = graphs.functions[cond.attr["else_branch"].func.name]
    fused = next(node for node in branch if node.op == "FusedBatchNormV3")
    mean = branch.data_inputs(fused.name)[3]
    (source,) = switch.trace(graphs.functions, branch, mean)
    assert source.graph is graphs.top and source.node.op == "Const"
    assert switch.stat_kind(source) == "moving"
