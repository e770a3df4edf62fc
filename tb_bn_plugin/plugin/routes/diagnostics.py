"""The ``diagnostics`` route: the findings of one run or of all runs, statistics and graph."""

from __future__ import annotations

from typing import Any, Optional

from tb_bn_plugin.plugin.routes.params import check_run
from tb_bn_plugin.plugin.routes.runs import cached_graph_findings, overview_runs, run_findings
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.graph import graph_versions
from tb_bn_plugin.reading.provider import ExperimentSource


def diagnostics_impl(
    source: ExperimentSource, run: Optional[str] = None, cache: Optional[SeriesCache] = None
) -> dict[str, Any]:
    """Findings of one run or of all runs: the overview's statistics findings, then the graph's.

    A statistics finding names ``layers`` (and ``channels``); a graph finding
    names ``sites`` (``graph_impl``'s findings), so each links to its view.
    """
    runs = dict(overview_runs(source, cache, [run] if run is not None else None))
    graphs = graph_versions(source)
    if run is not None:
        if run not in runs and run not in graphs:
            check_run(source, run)
        graphs = {name: v for name, v in graphs.items() if name == run}
    found = [
        {"run": name, **finding.to_json()}
        for name, run_data in sorted(runs.items())
        for finding in run_findings(run_data, cache)
    ]
    found += [
        {"run": name, **finding}
        for name, version in sorted(graphs.items())
        for finding in cached_graph_findings(source, name, version, cache, runs.get(name))
    ]
    return {"diagnostics": found}
