"""The ``graph`` route: the BatchNorm sites and graph-level findings of a run's stored graph."""

from __future__ import annotations

from typing import Any

from tensorboard import errors

from tb_bn_plugin.diagnostics.graph import graph_finding_json, report_graph
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
    report = report_graph(graph)
    return {
        "run": run,
        # float32 constants as they print (0.99, not 0.9900000095), like every route's numbers.
        "sites": [
            {**site.to_json(), "momentum": json_values(site.momentum)} for site in report.sites
        ],
        "findings": [graph_finding_json(finding) for finding in report.findings],
        "error": None,
    }
