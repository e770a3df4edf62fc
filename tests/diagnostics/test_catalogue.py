"""``diagnostics.catalogue.CATALOGUE``: every rule of every family, each code defined once.

Checked three ways: statically (every ``Rule(...)`` in the package has its
own code, and only ``Rule.finding`` builds a ``Finding``), by construction
(``build_catalogue`` refuses two rules with one code) and on findings that
statistics and graph rules actually produce.
"""

from __future__ import annotations

import ast
import pathlib
import types

import numpy as np
import pytest
from _bn_graphs import build_seed004_graph, graph_without_batchnorm
from test_diagnostics import (
    SLOW_MEAN,
    SLOW_STD,
    gap_series,
    healthy_layers,
    run_of,
    simulate_layer,
)

from tb_bn_plugin import metadata
from tb_bn_plugin.diagnostics import diagnose, moving_stats
from tb_bn_plugin.diagnostics import graph as graph_rules
from tb_bn_plugin.diagnostics.catalogue import CATALOGUE, FAMILIES, build_catalogue
from tb_bn_plugin.diagnostics.finding import SEVERITY_ORDER, Rule

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "tb_bn_plugin"


def _calls(name: str) -> list[tuple[pathlib.Path, ast.Call, list[str]]]:
    """Every call of ``name`` (plain or as an attribute) in the package, with its enclosing defs."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, scopes: list[str], path: pathlib.Path = path) -> None:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                scopes = [*scopes, node.name]
            if isinstance(node, ast.Call):
                func = node.func
                if getattr(func, "id", getattr(func, "attr", None)) == name:
                    found.append((path, node, scopes))
            for child in ast.iter_child_nodes(node):
                visit(child, scopes)

        visit(tree, [])
    return found


def test_every_code_is_defined_once():
    codes = []
    for path, call, _ in _calls("Rule"):
        assert call.args and isinstance(call.args[0], ast.Constant), f"{path}: Rule(<literal code>)"
        codes.append(call.args[0].value)
    duplicates = sorted({code for code in codes if codes.count(code) > 1})
    assert not duplicates, f"codes defined more than once: {duplicates}"
    assert sorted(codes) == sorted(CATALOGUE)


def test_catalogue_holds_every_family_rule():
    for family in FAMILIES:
        for rule in vars(family).values():
            if isinstance(rule, Rule):
                assert CATALOGUE[rule.code] is rule
    assert all(rule.severity in SEVERITY_ORDER and rule.fix for rule in CATALOGUE.values())
    assert {
        "update-ops-not-wired",
        "no-update-ops",
        "no-batchnorm",
        "malformed-graph",
        "momentum-one",
        "stale-moving-stats",
    } <= set(CATALOGUE)


def test_momentum_one_is_one_rule_for_statistics_and_graphs():
    assert graph_rules.MOMENTUM_ONE is moving_stats.MOMENTUM_ONE
    rule = CATALOGUE["momentum-one"]
    assert rule.severity == "error"
    assert "logged statistics" in rule.fix and "graph's update ops" in rule.fix


def test_build_catalogue_refuses_a_code_defined_twice():
    rule = Rule("some-code", "info", "fix it")
    first = types.SimpleNamespace(__name__="first", RULE=rule)
    reuse = types.SimpleNamespace(__name__="reuse", RULE=rule)  # the same rule: fine
    assert build_catalogue([first, reuse]) == {"some-code": rule}
    clash = types.SimpleNamespace(__name__="clash", OTHER=Rule("some-code", "info", "fix it"))
    with pytest.raises(ValueError, match="'some-code' is defined twice.*clash.OTHER"):
        build_catalogue([first, clash])


def test_only_rules_build_findings():
    builders = {(path.name, tuple(scopes)) for path, _, scopes in _calls("Finding")}
    assert builders == {("finding.py", ("Rule", "finding"))}


def _statistics_findings():
    non_finite = simulate_layer("nan/bn", 5)
    non_finite.channels[metadata.MOVING_MEAN][40:, 2] = np.nan
    runs = [
        run_of(simulate_layer(count=16, momentum=0.99, apply_updates=False)),
        run_of(simulate_layer(mean=[127.5], std=[73.6], count=16, momentum=1.0)),
        run_of(simulate_layer(mean=SLOW_MEAN, std=SLOW_STD, momentum=0.999, steps=100)),
        run_of(simulate_layer(count=1, momentum=0.5)),
        run_of(simulate_layer(training=[False] * 50)),
        run_of(non_finite),
        run_of(*healthy_layers(), gap=gap_series(0.4, 1.0, local={"conv/bn": 0.6})),
    ]
    return [finding for run in runs for finding in diagnose(run)]


def _graph_findings():
    graphs = [
        build_seed004_graph(wire_updates=False, momentum=1.0),
        build_seed004_graph("FusedBatchNorm", freeze=True),
        graph_without_batchnorm(),
        b"\xff\xfe this is not a protobuf \x00\x01",
    ]
    return [finding for graph in graphs for finding in graph_rules.report_graph(graph).findings]


def test_findings_carry_their_rules_severity_and_fix():
    statistics, graph = _statistics_findings(), _graph_findings()
    for finding in statistics + graph:
        rule = CATALOGUE[finding.code]
        assert (finding.severity, finding.fix) == (rule.severity, rule.fix), finding.code
    assert {f.code for f in statistics} >= {
        "stale-moving-stats",
        "momentum-one",
        "slow-momentum",
        "tiny-batch",
        "train-inference-gap",
        "frozen-bn",
        "uninitialized-moving-stats",
        "dead-channels",
        "non-finite",
    }
    assert {f.code for f in graph} == {
        "update-ops-not-wired",
        "momentum-one",
        "no-update-ops",
        "no-batchnorm",
        "malformed-graph",
    }
