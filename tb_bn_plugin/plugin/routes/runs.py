"""The ``runs`` route (the overview): every run, its layers, latest gap and diagnostic codes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

import numpy as np
from tensorboard.data import provider as tb_provider
from tensorboard.plugins.graph import metadata as graph_metadata

from tb_bn_plugin import diagnostics, metadata
from tb_bn_plugin.plugin.routes.encoding import json_values, last
from tb_bn_plugin.plugin.routes.graph import graph_findings
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.load import load_runs
from tb_bn_plugin.reading.provider import ExperimentSource, evenly_spaced
from tb_bn_plugin.series import GapSeries, LayerSeries, RunData

# Events per tag read for the overview and the diagnostics.
OVERVIEW_POINTS = 64
SPARKLINE_POINTS = 64

ROW_CONFIG_FIELDS = ("path", "index", "channels", "axis", "momentum", "epsilon", "center", "scale")


def runs_impl(source: ExperimentSource, cache: Optional[SeriesCache] = None) -> dict[str, Any]:
    """The overview: every run with BN Internals data or a graph, its layers, gap and findings."""
    runs = overview_runs(source, cache)
    graph_runs = runs_with_graph(source)
    steps = _logged_steps(source, runs, cache)
    rows = []
    for name in sorted(set(runs) | graph_runs):
        run = runs.get(name) or RunData(run=name, layers={})
        findings = diagnostics.diagnose(run)
        rows.append(
            {
                "run": name,
                "has_graph": name in graph_runs,
                "graph_findings": [
                    {key: finding[key] for key in ("code", "severity", "title", "sites")}
                    for finding in graph_findings(source, name)
                ]
                if name in graph_runs
                else [],
                "errors": list(run.errors),
                "gap": _latest_gap(run.gap),
                "layers": [
                    _layer_row(layer, run.gap, findings, steps.get(name))
                    for layer in run.ordered_layers()
                ],
            }
        )
    return {"runs": rows}


def overview_runs(
    source: ExperimentSource, cache: Optional[SeriesCache], runs: Optional[Iterable[str]] = None
) -> dict[str, RunData]:
    """The runs as the overview and the diagnostics read them: ``OVERVIEW_POINTS`` per tag."""
    return load_runs(source, runs=runs, downsample=OVERVIEW_POINTS, cache=cache)


def _logged_steps(
    source: ExperimentSource, runs: Mapping[str, RunData], cache: Optional[SeriesCache]
) -> dict[str, np.ndarray]:
    """Every logged step of each run whose overview sample was cut short.

    Read in full from one layer per run: the writers log all layers of a run
    at the same steps, so a layer's count is the run's steps up to its last
    one. One read for all runs (one request to the data server, not one per
    run): the union of the runs' reference layers, usually one path.
    """
    references = {}
    for name, run in runs.items():
        capped = [layer for layer in run.ordered_layers() if len(layer.steps) >= OVERVIEW_POINTS]
        if capped:
            references[name] = capped[0].config.path
    if not references:
        return {}
    full = load_runs(
        source,
        runs=list(references),
        layers=set(references.values()),
        with_channels=False,
        with_gap=False,
        cache=cache,
    )
    return {
        name: full[name].layers[path].steps
        for name, path in references.items()
        if name in full and path in full[name].layers
    }


def _layer_row(
    layer: LayerSeries,
    gap: Optional[GapSeries],
    findings: list[diagnostics.Finding],
    run_steps: Optional[np.ndarray],
) -> dict[str, Any]:
    config = layer.config
    path = config.path
    shift = layer.summary_column(metadata.MEAN_SHIFT, "mean")
    spark = evenly_spaced(len(layer.steps), SPARKLINE_POINTS)
    last_step = int(layer.steps[-1]) if len(layer.steps) else 0
    num_steps = len(layer.steps)
    if run_steps is not None and num_steps >= OVERVIEW_POINTS:
        num_steps = max(num_steps, int(np.searchsorted(run_steps, last_step, side="right")))
    return {
        **{k: getattr(config, k) for k in ROW_CONFIG_FIELDS},
        "trainable": bool(last(layer.info["trainable"])),
        "training": bool(last(layer.info["training"])),
        "last_step": last_step,
        "num_steps": num_steps,
        "drift": last(shift),
        "sparkline": {"steps": layer.steps[spark].tolist(), "values": json_values(shift[spark])},
        "local_gap": last(gap.local[path]) if gap is not None and path in gap.local else None,
        "compound_gap": last(gap.compound[path])
        if gap is not None and path in gap.compound
        else None,
        "diagnostics": [
            {"code": f.code, "severity": f.severity} for f in findings if path in f.layers
        ],
    }


def _latest_gap(gap: Optional[GapSeries]) -> Optional[dict[str, Any]]:
    if gap is None or not len(gap.steps):
        return None
    return {
        "step": int(gap.steps[-1]),
        "train_loss": last(gap.train_loss),
        "inference_loss": last(gap.inference_loss),
        "metrics": {
            name: {mode: last(v) for mode, v in modes.items()}
            for name, modes in gap.metrics.items()
        },
    }


def runs_with_graph(source: ExperimentSource) -> set[str]:
    """Runs with a stored run graph (what ``read_run_graph`` reads) or, trained on JAX or
    PyTorch, a step-functions description (``read_step_functions``): what the graph view shows."""
    listing = source.provider.list_blob_sequences(
        source.ctx,
        experiment_id=source.experiment_id,
        plugin_name=graph_metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(tags=[graph_metadata.RUN_GRAPH_NAME]),
    )
    described = source.provider.list_tensors(
        source.ctx,
        experiment_id=source.experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(tags=[metadata.step_functions_tag()]),
    )
    return {run for run, tags in listing.items() if graph_metadata.RUN_GRAPH_NAME in tags} | {
        run for run, tags in described.items() if metadata.step_functions_tag() in tags
    }
