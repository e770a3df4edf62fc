"""Graph rules: findings about a GraphDef's BatchNorm sites, and ``report_graph``.

Owns the graph rules' codes, severities and fixes (``update-ops-not-wired``,
``updates-not-applied``, ``no-update-ops``, ``no-batchnorm``,
``malformed-graph``; ``momentum-one`` is the statistics rule
``moving_stats.MOMENTUM_ONE``, fired here from the momentum read from the
graph) and the public entry points of the graph analysis with findings:
``report_graph`` and ``analyze_graph`` for a GraphDef, ``report_step_functions``
for the step functions a model on JAX or PyTorch was described by,
``report_graph_or_step_functions`` for either (what a run stores), and
``findings_with_site_layers``: graph findings as the plugin and ``tb-bn report``
publish them, each site named with its logged layer.

Site rules hold per site (a predicate over the facts in
:class:`~tb_bn_plugin.graph.model.BNSite`); ``report_graph`` writes their codes
into each site's ``findings`` and gives one finding per code, naming the
sites (``layers``) with one evidence line per site (``evidence``: site name ->
line). ``malformed-graph`` and ``no-batchnorm`` are about the whole graph:
no layers, numbered evidence lines ("1", "2", ...). Unusable input
(:class:`~tb_bn_plugin.graph.index.MalformedGraphError`) becomes a
``malformed-graph`` finding; any other exception is a bug and propagates.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from tb_bn_plugin.diagnostics.finding import Finding, Rule, severity_rank
from tb_bn_plugin.diagnostics.moving_stats import MOMENTUM_ONE
from tb_bn_plugin.graph.index import MalformedGraphError
from tb_bn_plugin.graph.model import BNSite
from tb_bn_plugin.graph.ops import FUSED_OPS
from tb_bn_plugin.graph.sites import find_sites
from tb_bn_plugin.graph.step_functions import sites_of
from tb_bn_plugin.series import StepFunctions

UPDATE_OPS_NOT_WIRED = Rule(
    "update-ops-not-wired",
    "warning",
    "In graph mode BatchNormalization only creates the ops that update moving_mean and "
    "moving_variance; nothing runs them unless the train op depends on them, so inference "
    "keeps normalising with the initial statistics (mean 0, variance 1). Build the train op "
    "under the update ops: `update_ops = tf.compat.v1.get_collection("
    "tf.compat.v1.GraphKeys.UPDATE_OPS)` then `with tf.control_dependencies(update_ops): "
    "train_op = optimizer.minimize(loss)`, or run `update_ops` together with every training "
    "step. Keras `fit` and `tf.function` training steps wire them automatically.",
)

UPDATES_NOT_APPLIED = Rule(
    "updates-not-applied",
    "warning",
    "The train step computed the BatchNormalization layer's moving-average update but the "
    "moving mean and variance came out of the step unchanged, so inference keeps "
    "normalising with stale (here: never updated) statistics. On JAX a custom `train_step` "
    "must return the `non_trainable_variables` its `stateless_call` returned (not the ones "
    "it was given); on PyTorch nothing may restore or re-assign the layers' moving_mean and "
    "moving_variance after the step. Keras' own `train_step` applies them.",
)

NO_UPDATE_OPS = Rule(
    "no-update-ops",
    "info",
    "The graph normalises with batch statistics but contains no op that updates the moving "
    "statistics for this layer. That is expected in a frozen or exported inference graph, "
    "whose training branch is unused. If you train with this graph, the moving statistics "
    "never change: recreate it from the model code so the update ops are included and run.",
)

NO_BATCHNORM = Rule(
    "no-batchnorm",
    "info",
    "Nothing to inspect here. If the model has BatchNormalization layers, log the graph that "
    "runs them (the training or inference step), not a preprocessing or export-only graph.",
)

MALFORMED_GRAPH = Rule(
    "malformed-graph",
    "error",
    "Re-export the graph from the model (`tf.io.write_graph`, `tf.saved_model.save` or "
    "`tb-bn graph`); a truncated or hand-edited GraphDef can hide or invent BatchNorm ops. "
    "Results for the parts that could be read are still shown.",
)


class SiteRule(NamedTuple):
    """A rule checked per site: when it ``holds``, the finding's ``title`` and one evidence line."""

    rule: Rule
    title: str
    holds: Callable[[BNSite], bool]
    evidence: Callable[[BNSite], str]


def _update_evidence(site: BNSite) -> str:
    ops = ", ".join(str(ref) for ref in site.update_ops)
    return f"{site.name}: nothing that runs each step depends on {ops}"


def _momentum_evidence(site: BNSite) -> str:
    source = site.momentum_source
    read = f"exponential_avg_factor of {source}" if source.op in FUSED_OPS else str(source)
    return f"{site.name}: momentum {site.momentum:g} read from {read}"


def _not_applied_evidence(site: BNSite) -> str:
    function = site.update_ops[0].function if site.update_ops else "the train step"
    variables = ", ".join(site.moving_variables)
    return (
        f"{site.name}: {variables} unchanged by a step of {function} that normalised with "
        f"batch statistics differing from them (momentum {site.momentum:g})"
    )


def _no_update_evidence(site: BNSite) -> str:
    ops = ", ".join(str(ref) for ref in site.training_path)
    return f"{site.name}: training path {ops} has no moving-average update in this graph"


# In the order each site's ``findings`` lists their codes.
SITE_RULES = (
    SiteRule(
        UPDATE_OPS_NOT_WIRED,
        "Moving-average updates are never run",
        lambda site: site.updates_wired is False,
        _update_evidence,
    ),
    SiteRule(
        UPDATES_NOT_APPLIED,
        "The train step does not apply the moving-average updates",
        lambda site: site.updates_applied is False,
        _not_applied_evidence,
    ),
    SiteRule(
        MOMENTUM_ONE,
        "Moving statistics never change (momentum/decay = 1)",
        lambda site: site.momentum is not None and abs(site.momentum - 1.0) < 1e-6,
        _momentum_evidence,
    ),
    SiteRule(
        NO_UPDATE_OPS,
        "Training path without moving-average updates",
        lambda site: bool(site.training_path) and not site.update_ops,
        _no_update_evidence,
    ),
)


@dataclasses.dataclass
class GraphReport:
    """The BatchNorm sites of a graph plus graph-level findings."""

    sites: list[BNSite]
    findings: list[Finding]
    node_count: int = 0
    function_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "sites": [site.to_json() for site in self.sites],
            "findings": [graph_finding_json(finding) for finding in self.findings],
            "node_count": self.node_count,
            "function_count": self.function_count,
        }


def graph_finding_json(finding: Finding) -> dict[str, Any]:
    """A graph finding as published (``tb-bn graph --json``, ``frontend/API.md``).

    The layers are ``sites``; graph findings have no ``channels``.
    """
    return {
        "code": finding.code,
        "severity": finding.severity,
        "title": finding.title,
        "sites": list(finding.layers),
        "evidence": dict(finding.evidence),
        "fix": finding.fix,
    }


def report_graph(graph_def: Any) -> GraphReport:
    """Sites and graph-level findings for ``graph_def`` (a GraphDef proto or its bytes).

    Unusable input gives no sites and a ``malformed-graph`` finding instead of
    raising; the input problems the analysis worked around are a
    ``malformed-graph`` finding next to the sites.
    """
    try:
        found = find_sites(graph_def)
    except MalformedGraphError as err:
        return GraphReport(sites=[], findings=[_malformed(str(err))])
    mark_sites(found.sites)
    findings = graph_findings(found.sites)
    if found.problems:
        findings.append(_malformed(*found.problems))
    if not found.sites:
        searched = f"{found.node_count} nodes, {found.function_count} functions searched"
        findings.append(
            NO_BATCHNORM.finding("No BatchNorm ops in this graph", [], _numbered([searched]))
        )
    return GraphReport(
        sites=found.sites,
        findings=findings,
        node_count=found.node_count,
        function_count=found.function_count,
    )


def report_step_functions(described: StepFunctions) -> GraphReport:
    """Sites and findings of a model described by its step functions (JAX, PyTorch runs)."""
    sites = sites_of(described)
    mark_sites(sites)
    return GraphReport(sites=sites, findings=graph_findings(sites))


def report_graph_or_step_functions(stored: Any) -> GraphReport:
    """``report_step_functions`` of a ``StepFunctions``, else ``report_graph`` (a GraphDef)."""
    if isinstance(stored, StepFunctions):
        return report_step_functions(stored)
    return report_graph(stored)


def findings_with_site_layers(
    findings: Sequence[Finding], layers: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Graph findings as published (``graph_finding_json``), each with ``site_layers``: the
    logged layer of each of its sites that has one (``layers``: ``graph.layers.site_layers``).
    """
    return [
        {
            **graph_finding_json(finding),
            "site_layers": {site: layers[site] for site in finding.layers if site in layers},
        }
        for finding in findings
    ]


def analyze_graph(graph_def: Any) -> list[BNSite]:
    """One :class:`BNSite` per BatchNorm layer in ``graph_def``, sorted by name, codes filled.

    ``graph_def`` is a ``GraphDef`` (TensorBoard's or TensorFlow's proto class)
    or its serialized bytes. Unusable input gives ``[]`` (see
    :func:`report_graph` for the reason).
    """
    return report_graph(graph_def).sites


def mark_sites(sites: Sequence[BNSite]) -> None:
    """Set each site's ``findings`` to the codes of the site rules that hold for it."""
    for site in sites:
        site.findings = [check.rule.code for check in SITE_RULES if check.holds(site)]


def graph_findings(sites: Sequence[BNSite]) -> list[Finding]:
    """One finding per code in the sites' ``findings``, most severe first."""
    by_code: dict[str, list[BNSite]] = collections.defaultdict(list)
    for site in sites:
        for code in site.findings:
            by_code[code].append(site)
    findings = [
        check.rule.finding(
            check.title,
            [site.name for site in by_code[check.rule.code]],
            {site.name: check.evidence(site) for site in by_code[check.rule.code]},
        )
        for check in SITE_RULES
        if by_code.get(check.rule.code)
    ]
    findings.sort(key=lambda finding: severity_rank(finding.severity))
    return findings


def _numbered(lines: Sequence[str]) -> dict[str, str]:
    return {str(number): line for number, line in enumerate(lines, start=1)}


def _malformed(*problems: str) -> Finding:
    return MALFORMED_GRAPH.finding(
        "The graph is malformed or only partly usable", [], _numbered(problems)
    )
