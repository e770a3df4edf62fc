"""The ``graph`` route: the BatchNorm sites and graph-level findings of a run's stored graph."""

from __future__ import annotations

from typing import Any

from tensorboard import errors

from tb_bn_plugin.graph import analysis
from tb_bn_plugin.graph.load import GraphLoadError
from tb_bn_plugin.plugin.routes.encoding import json_values
from tb_bn_plugin.plugin.routes.params import check_run
from tb_bn_plugin.reading.graph import read_run_graph
from tb_bn_plugin.reading.provider import ExperimentSource


def graph_impl(source: ExperimentSource, run: str) -> dict[str, Any]:
    """The BatchNorm sites and graph-level findings of ``run``'s stored graph.

    Raises ``errors.NotFoundError`` for an unknown run, a run without a graph
    and a stored graph that is not a ``GraphDef``.
    """
    try:
        graph = read_run_graph(source.provider, source.ctx, source.experiment_id, run)
    except GraphLoadError as err:
        raise errors.NotFoundError(str(err)) from None
    if graph is None:
        check_run(source, run)
        raise errors.NotFoundError(
            f"run {run!r} has no graph; write one with tb_bn_plugin.write_graph or tf.summary.graph"
        )
    report = analysis.report_graph(graph)
    return {
        "run": run,
        "sites": [_site_json(site) for site in report.sites],
        "findings": [_graph_finding_json(finding) for finding in report.findings],
        "error": None,
    }


def _site_json(site: analysis.BNSite) -> dict[str, Any]:
    """A site with its ops as node names (the contract's strings)."""
    return {
        "name": site.name,
        "kind": site.kind,
        "training_path": [ref.name for ref in site.training_path],
        "inference_path": [ref.name for ref in site.inference_path],
        "predicate": site.predicate,
        "switch_op": site.switch_op.name if site.switch_op is not None else None,
        "merge_op": site.merge_op.name if site.merge_op is not None else None,
        "update_ops": [ref.name for ref in site.update_ops],
        "updates_wired": site.updates_wired,
        "momentum": json_values(site.momentum) if site.momentum is not None else None,
    }


def _graph_finding_json(finding: analysis.Finding) -> dict[str, Any]:
    """Evidence lines keyed by the site they are about (aligned) or numbered."""
    evidence = finding.evidence
    if len(finding.sites) == len(evidence) and len(set(finding.sites)) == len(evidence):
        keyed = dict(zip(finding.sites, evidence))
    else:
        keyed = {str(i + 1): line for i, line in enumerate(evidence)}
    return {
        "code": finding.code,
        "severity": finding.severity,
        "title": finding.title,
        "sites": list(finding.sites),
        "evidence": keyed,
        "fix": finding.fix,
    }
