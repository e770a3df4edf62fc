"""``graph.sites``: finding every BatchNorm layer of a GraphDef and assembling its site.

Control flow and updates have their own tests (``test_switch``,
``test_wiring``); here: which ops make a site, how they are grouped into
layers (scopes, library functions), robustness to inconsistent input, and
linear cost on huge graphs.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import tensorflow as tf
from _bn_graphs import (
    ROOT,
    TFKERAS_SAVED_MODEL,
    as_tb_graph_def,
    build_seed004_graph,
    cyclic_graph,
    graph_without_batchnorm,
    keras3_bn_model,
    legacy_graphs,
    missing_branch_graph,
    names,
    two_seed004_layers,
)

from tb_bn_plugin.diagnostics.graph import report_graph
from tb_bn_plugin.graph.index import MalformedGraphError
from tb_bn_plugin.graph.model import (
    KIND_FUNCTIONAL_IF,
    KIND_SEPARATE_FUNCTIONS,
    KIND_SWITCH_MERGE,
    KIND_UNSWITCHED,
)
from tb_bn_plugin.graph.sites import find_sites
from tb_bn_plugin.training.graph_trace import trace_model_graph


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    return legacy_graphs(tmp_path_factory)


def test_gradient_ops_are_not_sites():
    graph_def = build_seed004_graph("FusedBatchNormV3")
    ops = {node.op for node in graph_def.node}
    assert "FusedBatchNormGradV3" in ops
    sites = find_sites(graph_def).sites
    assert [site.name for site in sites] == ["bn"]
    path_ops = {ref.op for site in sites for ref in site.training_path + site.inference_path}
    assert path_ops == {"FusedBatchNormV3"}


def test_frozen_seed004_graph():
    graph_def = build_seed004_graph("FusedBatchNorm", freeze=True)
    assert "Switch" in {node.op for node in graph_def.node}
    (site,) = find_sites(graph_def).sites
    assert site.kind == KIND_SWITCH_MERGE
    assert names(site.training_path) == ["bn/cond/FusedBatchNorm"]
    assert names(site.inference_path) == ["bn/cond/FusedBatchNorm_1"]
    assert site.predicate == "training:0"
    # Freezing keeps only what bn/cond/Merge needs: the updates are gone.
    assert site.update_ops == [] and site.updates_wired is None
    assert site.moving_variables == ["bn/moving_mean", "bn/moving_variance"]


@pytest.mark.parametrize("wire_updates", [True, False])
def test_orphaned_branch_functions_are_not_sites(wire_updates):
    """Seed 004 under TF 2.x's default control flow v2, with a train op (issue #12).

    Gradients rewrite the ``If``'s branches; the originals stay in the library,
    called by nothing. They used to make two extra ``unswitched`` sites.
    """
    graph_def = build_seed004_graph(control_flow_v2=True, wire_updates=wire_updates)
    library = [f.signature.name for f in graph_def.library.function]
    orphans = [n for n in library if "_cond_" in n and not n.endswith("_rewritten")]
    orphans = [n for n in orphans if "_grad_" not in n]
    assert len(orphans) == 2  # the situation under test: the original branches remain
    (site,) = find_sites(graph_def).sites
    assert site.name == "bn" and site.kind == KIND_FUNCTIONAL_IF
    functions = {ref.function for ref in site.training_path + site.inference_path}
    assert functions and all(f.endswith("_rewritten") for f in functions)
    assert names(site.update_ops) == ["bn/AssignMovingAvg", "bn/AssignMovingAvg_1"]
    assert site.updates_wired is wire_updates
    codes = [f.code for f in report_graph(graph_def).findings]
    assert codes == ([] if wire_updates else ["update-ops-not-wired"])


def test_layers_keep_their_scopes():
    sites = find_sites(two_seed004_layers()).sites
    assert [site.name for site in sites] == ["a/bn", "b/bn"]
    assert names(sites[1].update_ops) == ["b/bn/AssignMovingAvg", "b/bn/AssignMovingAvg_1"]


def test_sites_leave_findings_to_diagnostics():
    (site,) = find_sites(build_seed004_graph(wire_updates=False)).sites
    assert site.updates_wired is False and site.findings == []


# ---------------------------------------------------------------------------
# Library functions: separately traced training and inference


def test_tfkeras_saved_model_separate_functions(legacy):
    """A tf-keras SavedModel traces the layer's training and inference calls separately."""
    sites = {site.name: site for site in find_sites(legacy[TFKERAS_SAVED_MODEL]).sites}
    site = sites["bn"]  # named after __inference_bn_layer_call_and_return_conditional_losses_N
    assert site.kind == KIND_SEPARATE_FUNCTIONS
    assert {ref.op for ref in site.training_path + site.inference_path} == {"FusedBatchNormV3"}
    assert not {r.function for r in site.training_path} & {r.function for r in site.inference_path}
    assert {ref.name for ref in site.update_ops} == {"AssignNewValue", "AssignNewValue_1"}
    assert site.updates_wired is True
    assert site.momentum == pytest.approx(0.99)
    # The model's own inference function calls the layer with moving statistics only.
    assert sites["net/bn"].kind == KIND_UNSWITCHED and sites["net/bn"].training_path == []


def test_keras3_separate_functions(keras):
    model = keras3_bn_model(keras, momentum=0.9)
    graph_def = trace_model_graph(model)
    assert int(model.optimizer.iterations.numpy()) == 0  # tracing runs nothing
    (site,) = find_sites(graph_def).sites
    assert re.fullmatch(r"net(_\d+)?/bn(_\d+)?", site.name)  # Keras numbers traced scopes
    assert site.kind == KIND_SEPARATE_FUNCTIONS
    assert site.switch_op is None and site.predicate is None
    (train_op,) = site.training_path
    (infer_op,) = site.inference_path
    assert train_op.name.endswith("/batchnorm/Rsqrt") and infer_op.name.endswith("/batchnorm/Rsqrt")
    assert "train_step" in train_op.function and "inference_step" in infer_op.function


def test_unscoped_op_in_a_function_takes_the_function_name():
    @tf.function
    def bn(x):
        return tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=tf.ones(3),
            offset=tf.zeros(3),
            mean=tf.zeros(3),
            variance=tf.ones(3),
            is_training=False,
        )[0]

    step = tf.function(lambda x: bn(x) + 1.0)
    graph_def = step.get_concrete_function(tf.TensorSpec((1, 2, 2, 3))).graph.as_graph_def()
    (site,) = find_sites(graph_def).sites
    (op,) = site.inference_path
    assert op.name == "FusedBatchNormV3" and re.fullmatch(r"__inference_bn_\d+", op.function)
    assert site.name == "bn"
    function = op.function
    # A newline in a (hand-edited) function name is just a character.
    edited = as_tb_graph_def(graph_def)
    for fdef in edited.library.function:
        if fdef.signature.name == function:
            fdef.signature.name = "bad\nname"
    for node in edited.node:
        for value in node.attr.values():
            if value.func.name == function:
                value.func.name = "bad\nname"
    (site,) = find_sites(edited).sites
    assert site.name == "bad\nname"


# ---------------------------------------------------------------------------
# No BatchNorm, inconsistent input, huge graphs


def test_graph_without_batchnorm():
    found = find_sites(graph_without_batchnorm())
    assert found.sites == [] and found.problems == []
    assert found.node_count > 0


def test_unusable_input_raises():
    with pytest.raises(MalformedGraphError, match="not a serialized GraphDef"):
        find_sites(b"\xff\xfe this is not a protobuf \x00\x01")


def test_dangling_inputs_still_give_the_site():
    graph_def = as_tb_graph_def(build_seed004_graph())
    kept = [node for node in graph_def.node if node.name != "bn/cond/FusedBatchNormV3/Switch"]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    found = find_sites(graph_def)
    (site,) = found.sites
    assert names(site.training_path) == ["bn/cond/FusedBatchNormV3"]
    assert "bn/cond/FusedBatchNormV3 <- bn/cond/FusedBatchNormV3/Switch" in found.problems[0]


def test_cycles_and_bad_references_do_not_crash():
    (site,) = find_sites(cyclic_graph()).sites
    assert site.name == "bn"
    assert names(site.training_path) == ["bn/FusedBatchNormV3"]
    found = find_sites(missing_branch_graph())
    (site,) = found.sites
    assert names(site.inference_path) == ["bn/FusedBatchNormV3"]
    assert "no_such_function" in " ".join(found.problems)


def test_huge_graph():
    spec = importlib.util.spec_from_file_location(
        "bench_graph_analysis", ROOT / "benchmarks" / "graph_analysis.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    graph_def, layers = bench.synthetic_graph_def(20_000)
    assert len(graph_def.node) >= 20_000
    sites = find_sites(graph_def).sites
    assert len(sites) == layers
    assert {site.kind for site in sites} == {KIND_SWITCH_MERGE}
    assert all(site.updates_wired and site.momentum == pytest.approx(0.99) for site in sites)
    assert sites[0].name == "block0/bn" and names(sites[0].inference_path) == [
        "block0/bn/cond/FusedBatchNormV3_1"
    ]


def test_site_to_json_is_json_safe_and_names_every_op():
    """One JSON form (the graph route's and ``tb-bn graph --json``'s): node names plus an op map."""
    (site,) = find_sites(build_seed004_graph(wire_updates=False)).sites
    data = json.loads(json.dumps(site.to_json()))
    assert data["kind"] == "switch_merge"
    assert data["training_path"] == ["bn/cond/FusedBatchNormV3"]
    assert data["switch_op"] == "bn/cond/FusedBatchNormV3/Switch"
    assert data["ops"]["bn/cond/FusedBatchNormV3"] == {"op": "FusedBatchNormV3", "function": ""}
    assert data["ops"]["bn/cond/FusedBatchNormV3/Switch"] == {"op": "Switch", "function": ""}
    named = (
        data["training_path"] + data["inference_path"] + data["update_ops"] + [data["switch_op"]]
    )
    assert set(named) <= set(data["ops"])
    assert data["updates_wired"] is False and data["momentum"] == pytest.approx(0.99)
