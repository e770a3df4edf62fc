"""The ``graph`` route: the BatchNorm sites and graph-level findings of a run's stored graph.

A run trained on JAX or PyTorch has no graph; its step-functions description
(``reading.graph.read_step_functions``) gives the same sites and findings.
Sites are named by their op scope (``resnet50_1/conv1_bn_1``); each site and
finding also names the logged layer a site belongs to (``graph.layers``), so
the tab links a site to its layer's detail.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import Any, Optional

from tensorboard import errors

from tb_bn_plugin.diagnostics.graph import (
    GraphReport,
    findings_with_site_layers,
    report_graph_or_step_functions,
)
from tb_bn_plugin.graph.layers import site_layers
from tb_bn_plugin.graph.load import GraphLoadError
from tb_bn_plugin.plugin.routes.encoding import json_values
from tb_bn_plugin.plugin.routes.params import check_run
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.graph import graph_versions, read_graph_or_step_functions
from tb_bn_plugin.reading.provider import ExperimentSource
from tb_bn_plugin.reading.tags import list_tags
from tb_bn_plugin.series import StepFunctions


def graph_impl(source: ExperimentSource, run: str) -> dict[str, Any]:
    """The BatchNorm sites and graph-level findings of ``run``'s stored graph.

    Without a graph, those of its step-functions description (``step_functions``
    says which functions; ``null`` for a graph). Raises ``errors.NotFoundError``
    for an unknown run, a run with neither and a stored graph that is not a
    ``GraphDef``.
    """
    try:
        stored = read_graph_or_step_functions(source, run)
    except GraphLoadError as err:
        raise errors.NotFoundError(str(err)) from None
    if stored is None:
        check_run(source, run)
        raise errors.NotFoundError(
            f"run {run!r} has no graph; write one with tb_bn_plugin.write_graph or tf.summary.graph"
        )
    report = report_graph_or_step_functions(stored)
    layers = site_layers(report.sites, _logged_layer_paths(source, run))
    return {
        "run": run,
        "step_functions": stored.functions_json() if isinstance(stored, StepFunctions) else None,
        # float32 constants as they print (0.99, not 0.9900000095), like every route's numbers.
        "sites": [
            {
                **site.to_json(),
                "momentum": json_values(site.momentum),
                "layer": layers.get(site.name),
            }
            for site in report.sites
        ],
        "findings": findings_with_site_layers(report.findings, layers),
        "error": None,
    }


def graph_findings(
    source: ExperimentSource,
    run: str,
    layer_paths: Collection[str],
    cache: Optional[SeriesCache] = None,
    version: Optional[Hashable] = None,
) -> list[dict[str, Any]]:
    """The graph-level findings of ``run`` (``graph_impl``'s ``findings``) for the overview.

    ``layer_paths``: the run's logged layers, which the findings' sites are
    mapped to (``site_layers``). Empty when the run has neither a graph nor a
    step-functions description, or its stored graph is not a ``GraphDef``: the
    graph view explains why (``graph_impl``'s 404). ``cache`` and ``version``
    (``graph_versions``'): see ``cached_graph_report``.
    """
    report = cached_graph_report(source, run, version, cache)
    if report is None:
        return []
    layers = site_layers(report.sites, layer_paths)
    if cache is not None and version is not None:
        # What ``layer_sites`` would compute (the overview knows the logged layers): its
        # first request after the overview's warm-up then lists no tags.
        cache.put_result(_site_layers_key(run, version), layers)
    return findings_with_site_layers(report.findings, layers)


def layer_sites(
    source: ExperimentSource, run: str, layer: str, cache: Optional[SeriesCache] = None
) -> list[str]:
    """The sites of ``run``'s graph (or step functions) that belong to its logged ``layer``
    (``site_layers``, as the graph route names them), in the graph's order; ``[]`` without a
    readable graph.

    The graph's report is cached per stored graph (``cached_graph_report``) and
    so is the mapping of its sites to the run's logged layers; the overview's
    warm-up fills both (``graph_findings``), so a layer request then costs two
    listings. Without the overview the mapping is computed once per stored
    graph: a layer that appears later without the graph being written again
    (the callback writes it at the start of every ``fit``) is named once the
    overview has seen it.
    """
    version = graph_versions(source, [run]).get(run)
    if version is None:
        return []

    def mapping() -> dict[str, str]:
        report = cached_graph_report(source, run, version, cache)
        if report is None:
            return {}
        return site_layers(report.sites, _logged_layer_paths(source, run))

    layers = mapping() if cache is None else cache.computed(_site_layers_key(run, version), mapping)
    return [site for site, path in layers.items() if path == layer]


def _site_layers_key(run: str, version: Hashable) -> Hashable:
    return ("site_layers", run, version)


def cached_graph_report(
    source: ExperimentSource,
    run: str,
    version: Optional[Hashable],
    cache: Optional[SeriesCache],
) -> Optional[GraphReport]:
    """The report of ``run``'s graph or step functions (``None`` without a readable one), read
    and analysed once per ``version`` (``graph_versions``') while ``cache`` keeps it."""
    if cache is None or version is None:
        return _readable_report(source, run)
    return cache.computed(("graph_report", run, version), lambda: _readable_report(source, run))


def _logged_layer_paths(source: ExperimentSource, run: str) -> list[str]:
    """The layer paths ``run`` logged statistics for (tag metadata only, no values read)."""
    tags, _ = list_tags(source, runs=[run])
    return [tag.layer.path for tag in tags.get(run, ()) if tag.layer is not None]


def _readable_report(source: ExperimentSource, run: str) -> Optional[GraphReport]:
    try:
        stored = read_graph_or_step_functions(source, run)
    except GraphLoadError:
        return None
    return report_graph_or_step_functions(stored) if stored is not None else None
