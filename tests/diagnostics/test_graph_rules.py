"""``diagnostics.graph``: the graph rules, ``report_graph`` and ``analyze_graph``.

Graphs are built with real TensorFlow (``_bn_graphs``); legacy-Keras graphs
come from ``_bn_graphs.legacy_graphs``.
"""

from __future__ import annotations

import json

import pytest
from _bn_graphs import (
    build_seed004_graph,
    graph_without_batchnorm,
    keras3_bn_model,
    legacy_graphs,
    missing_branch_graph,
    nested_calls_graph,
    stateless_if_graph,
    two_seed004_layers,
)

import tb_bn_plugin
from tb_bn_plugin.diagnostics import graph as rules
from tb_bn_plugin.diagnostics import moving_stats
from tb_bn_plugin.diagnostics.finding import Finding
from tb_bn_plugin.graph import wiring
from tb_bn_plugin.training.graph_trace import trace_model_graph

GARBAGE = b"\xff\xfe this is not a protobuf \x00\x01"


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    return legacy_graphs(tmp_path_factory)


def codes(report):
    return [finding.code for finding in report.findings]


# ---------------------------------------------------------------------------
# Healthy graphs


@pytest.mark.parametrize("op_type", ["FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"])
def test_wired_switch_merge_graph_has_no_findings(op_type):
    report = rules.report_graph(build_seed004_graph(op_type))
    (site,) = report.sites
    assert site.findings == [] and report.findings == []


@pytest.mark.parametrize("name", ["seed001_train_op", "seed001_identity", "tfkeras_if"])
def test_wired_legacy_graphs_have_no_findings(legacy, name):
    report = rules.report_graph(legacy[name])
    (site,) = report.sites
    assert site.findings == [] and report.findings == []


def test_keras3_graph_has_no_findings(keras):
    (site,) = rules.analyze_graph(trace_model_graph(keras3_bn_model(keras)))
    assert site.findings == []


# ---------------------------------------------------------------------------
# Site rules


def test_update_ops_not_wired(legacy):
    report = rules.report_graph(legacy["seed001_unwired"])
    (site,) = report.sites
    assert site.findings == ["update-ops-not-wired"]
    (finding,) = report.findings
    assert isinstance(finding, Finding)
    assert finding.code == "update-ops-not-wired" and finding.severity == "warning"
    assert finding.title == "Moving-average updates are never run"
    assert finding.layers == ["bn"] and finding.channels == {}
    assert finding.evidence == {
        "bn": "bn: nothing that runs each step depends on bn/AssignMovingAvg, bn/AssignMovingAvg_1"
    }
    assert "tf.control_dependencies" in finding.fix
    assert finding.fix == rules.UPDATE_OPS_NOT_WIRED.fix


def test_update_ops_not_wired_in_functional_if(legacy):
    (site,) = rules.analyze_graph(legacy["v2_if_unwired"])
    assert site.findings == ["update-ops-not-wired"]


def test_one_finding_names_every_site_with_evidence_per_site():
    report = rules.report_graph(two_seed004_layers(wire_updates=False))
    assert [site.findings for site in report.sites] == [["update-ops-not-wired"]] * 2
    (finding,) = report.findings
    assert finding.layers == ["a/bn", "b/bn"]
    assert list(finding.evidence) == ["a/bn", "b/bn"]
    assert finding.evidence["b/bn"].startswith("b/bn: nothing that runs each step depends on b/bn/")


@pytest.mark.parametrize(
    "name, source",
    [
        ("unfused_momentum_one", "bn/cond_2/AssignMovingAvg/decay"),
        ("v2_if_momentum_one", "Const (in bn_cond_1_true"),
    ],
)
def test_momentum_one_is_the_statistics_rule(legacy, name, source):
    report = rules.report_graph(legacy[name])
    (site,) = report.sites
    assert site.findings == ["momentum-one"]
    (finding,) = report.findings
    assert finding.code == "momentum-one"
    assert finding.severity == "error"  # was "warning" before the two rules were merged
    assert finding.fix == moving_stats.MOMENTUM_ONE.fix
    assert finding.title == "Moving statistics never change (momentum/decay = 1)"
    assert finding.evidence == {"bn": f"bn: momentum 1 read from {site.momentum_source}"}
    assert source in str(site.momentum_source)


def test_momentum_one_from_a_fused_ops_factor():
    report = rules.report_graph(nested_calls_graph(2, exponential_avg_factor=0.0))
    (finding,) = report.findings
    assert finding.evidence == {
        "bn": "bn: momentum 1 read from exponential_avg_factor of bn/FusedBatchNormV3 (in f2)"
    }


def test_most_severe_first_site_codes_in_rule_order():
    report = rules.report_graph(build_seed004_graph(wire_updates=False, momentum=1.0))
    (site,) = report.sites
    assert site.findings == ["update-ops-not-wired", "momentum-one"]
    assert codes(report) == ["momentum-one", "update-ops-not-wired"]


def test_no_update_ops_in_frozen_graphs():
    report = rules.report_graph(build_seed004_graph("FusedBatchNorm", freeze=True))
    (site,) = report.sites
    assert site.findings == ["no-update-ops"]
    (finding,) = report.findings
    assert finding.severity == "info"
    assert finding.evidence == {
        "bn": "bn: training path bn/cond/FusedBatchNorm has no moving-average update in this graph"
    }
    (site,) = rules.analyze_graph(stateless_if_graph())
    assert site.findings == ["no-update-ops"]


# ---------------------------------------------------------------------------
# Whole-graph rules


def test_no_batchnorm():
    report = rules.report_graph(graph_without_batchnorm())
    assert report.sites == []
    (finding,) = report.findings
    assert finding.code == "no-batchnorm" and finding.severity == "info"
    assert finding.layers == []
    assert finding.evidence == {
        "1": f"{report.node_count} nodes, {report.function_count} functions searched"
    }
    assert report.node_count > 0


def test_garbage_bytes():
    assert rules.analyze_graph(GARBAGE) == []
    report = rules.report_graph(GARBAGE)
    (finding,) = report.findings
    assert finding.code == "malformed-graph" and finding.severity == "error"
    assert finding.layers == [] and list(finding.evidence) == ["1"]
    assert "not a serialized GraphDef" in finding.evidence["1"]


@pytest.mark.parametrize("value", [None, 42, "graph.pb", {"node": []}])
def test_not_a_graph(value):
    report = rules.report_graph(value)
    assert report.sites == []
    assert codes(report) == ["malformed-graph"]


def test_problems_next_to_the_sites():
    report = rules.report_graph(missing_branch_graph())
    (site,) = report.sites
    assert site.findings == []
    (finding,) = report.findings
    assert finding.code == "malformed-graph"
    assert finding.evidence == {
        "1": "1 input(s) name missing nodes: bn/FusedBatchNormV3 <- bad",
        "2": "1 call(s) to functions not in the library: bn/cond calls no_such_function",
    }


def test_site_findings_come_before_the_malformed_graph_finding():
    graph_def = build_seed004_graph(wire_updates=False)
    graph_def.node.add().CopyFrom(graph_def.node[0])
    assert codes(rules.report_graph(graph_def)) == ["update-ops-not-wired", "malformed-graph"]


# ---------------------------------------------------------------------------
# Bugs are not "malformed graph"


@pytest.mark.parametrize(
    "error", [KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError]
)
def test_a_bug_in_the_analysis_propagates(monkeypatch, error):
    def broken(graph, node):
        raise error("bug")

    monkeypatch.setattr(wiring, "is_update", broken)
    with pytest.raises(error, match="bug"):
        rules.report_graph(build_seed004_graph())


# ---------------------------------------------------------------------------
# JSON and the public API


def test_to_json_is_json_safe_and_keeps_the_published_shape():
    report = rules.report_graph(build_seed004_graph(wire_updates=False))
    data = json.loads(json.dumps(report.to_json()))
    (site,) = data["sites"]
    assert site["kind"] == "switch_merge"
    assert site["findings"] == ["update-ops-not-wired"]
    (finding,) = data["findings"]
    assert set(finding) == {"code", "severity", "title", "sites", "evidence", "fix"}
    assert finding["code"] == "update-ops-not-wired" and finding["sites"] == ["bn"]
    assert list(finding["evidence"]) == ["bn"]
    assert data["node_count"] == report.node_count and data["function_count"] == 0


def test_public_api():
    assert tb_bn_plugin.analyze_graph is rules.analyze_graph
    assert tb_bn_plugin.report_graph is rules.report_graph


def _described(applied, momentum=0.9):
    from tb_bn_plugin.series import StepFunctions

    return StepFunctions(
        step=3,
        backend="torch",
        train_function="Stale.train_step (eager)",
        inference_function="Stale.predict_step (eager)",
        layers=["b/bn", "a/bn"],
        momentum=[momentum, momentum],
        moving_variables=[["b/bn/moving_mean", "b/bn/moving_variance"], ["a/bn/mm", "a/bn/mv"]],
        updates_applied=list(applied),
    )


def test_step_functions_sites_are_the_two_functions_with_measured_updates():
    report = rules.report_step_functions(_described([False, True]))
    data = json.loads(json.dumps(report.to_json()))
    assert [site["name"] for site in data["sites"]] == ["a/bn", "b/bn"]
    a, b = data["sites"]
    assert b["kind"] == "separate_functions"
    assert b["training_path"] == ["Stale.train_step (eager)", "b/bn/batch_moments"]
    assert b["inference_path"] == ["Stale.predict_step (eager)", "b/bn/moving_statistics"]
    assert b["update_ops"] == ["b/bn/moving_mean/update", "b/bn/moving_variance/update"]
    assert b["ops"]["b/bn/moving_mean/update"]["function"] == "Stale.train_step (eager)"
    assert (b["updates_applied"], b["updates_wired"]) == (False, None)
    assert b["findings"] == ["updates-not-applied"] and a["findings"] == []
    (finding,) = report.findings
    assert finding.code == "updates-not-applied" and finding.severity == "warning"
    assert finding.layers == ["b/bn"]
    assert "b/bn/moving_mean, b/bn/moving_variance unchanged" in finding.evidence["b/bn"]
    assert "Stale.train_step (eager)" in finding.evidence["b/bn"]


def test_step_functions_undecided_and_momentum_one():
    assert rules.report_step_functions(_described([True, None])).findings == []
    (finding,) = rules.report_step_functions(_described([None, None], momentum=1.0)).findings
    assert finding.code == "momentum-one" and finding.layers == ["a/bn", "b/bn"]
    assert finding.evidence["a/bn"] == "a/bn: momentum 1 read from a/bn/momentum"
