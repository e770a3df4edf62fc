"""The ``runs`` route (the overview): every run, its layers, latest gap and diagnostic codes."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import diagnostics, metadata
from tb_bn_plugin.plugin.routes.encoding import json_value_lists, last
from tb_bn_plugin.plugin.routes.graph import graph_findings
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.graph import graph_versions
from tb_bn_plugin.reading.load import iter_runs, logged_steps, reader_pool
from tb_bn_plugin.reading.provider import ExperimentSource, evenly_spaced
from tb_bn_plugin.series import GapSeries, LayerSeries, RunData

# Events per tag read for the overview and the diagnostics: summary records, per-channel
# snapshots (the rules read the latest ones; fewer keep a 1,000-layer overview fast).
OVERVIEW_POINTS = 64
OVERVIEW_SNAPSHOTS = 16
SPARKLINE_POINTS = 64

ROW_CONFIG_FIELDS = ("path", "index", "channels", "axis", "momentum", "epsilon", "center", "scale")


def runs_impl(source: ExperimentSource, cache: Optional[SeriesCache] = None) -> dict[str, Any]:
    """The overview: every run with BN Internals data or a graph, its layers, gap and findings.

    A run's row is computed once per ``RunData.version`` while ``cache`` keeps
    it (its graph findings once per stored graph): a repeated overview reads
    the runs' (cached) series and each run's gap, and computes nothing else.
    """
    graphs = graph_versions(source)
    runs: dict[str, RunData] = {}
    rows: dict[str, dict[str, Any]] = {}
    # Over the data server, each new row's findings are computed while the next runs and its
    # logged steps are read (``reader_pool``).
    with reader_pool(source, 1, "bn_steps") as steps_pool:
        pending = {}
        for name, run in overview_runs(source, cache):
            runs[name] = run
            row = cache.get(_row_key(run)) if cache is not None else None
            if row is not None:
                rows[name] = row
                continue
            steps = steps_pool.submit(_logged_steps, source, run)
            pending[name] = (run_findings(run, cache), steps)
        for name, (findings, steps) in pending.items():
            rows[name] = _run_row(runs[name], findings, steps.result())
            if cache is not None:
                cache.put_result(_row_key(runs[name]), rows[name])
    answer = []
    for name in sorted(set(runs) | set(graphs)):
        row = rows.get(name) or _run_row(RunData(run=name, layers={}), [], None)
        found = (
            cached_graph_findings(source, name, graphs[name], cache, runs.get(name))
            if name in graphs
            else []
        )
        answer.append(
            {
                "run": name,
                "has_graph": name in graphs,
                "graph_findings": [
                    {
                        key: finding[key]
                        for key in ("code", "severity", "title", "sites", "site_layers")
                    }
                    for finding in found
                ],
                **row,
            }
        )
    return {"runs": answer}


def run_findings(run: RunData, cache: Optional[SeriesCache]) -> list[diagnostics.Finding]:
    """``diagnostics.diagnose(run)`` of an overview-sampled run, once per version while cached."""
    if cache is None or not run.version:
        return diagnostics.diagnose(run)
    key = ("findings", OVERVIEW_POINTS, OVERVIEW_SNAPSHOTS, run.run, run.version)
    return cache.computed(key, lambda: diagnostics.diagnose(run))


def cached_graph_findings(
    source: ExperimentSource,
    run: str,
    version: Hashable,
    cache: Optional[SeriesCache],
    data: Optional[RunData],
) -> list[dict[str, Any]]:
    """``graph_findings`` of ``run``, once per stored graph (``graph_versions``) and set of
    logged layers (``data``'s, which the sites are mapped to) while cached."""
    layers = frozenset(data.layers if data is not None else ())
    if cache is None:
        return graph_findings(source, run, layers)
    return cache.computed(
        ("graph_findings", run, version, layers),
        lambda: graph_findings(source, run, layers, cache, version),
    )


def _row_key(run: RunData) -> Hashable:
    return ("overview_row", OVERVIEW_POINTS, OVERVIEW_SNAPSHOTS, run.run, run.version)


def _run_row(
    run: RunData, findings: list[diagnostics.Finding], steps: Optional[np.ndarray]
) -> dict[str, Any]:
    """A run's overview row, without its graph: errors, latest gap and layer rows."""
    layers = run.ordered_layers()
    # Each layer's sparkline and latest drift, local and compound gap, encoded in one pass.
    series = []
    for layer in layers:
        path = layer.config.path
        shift = layer.summary_column(metadata.MEAN_SHIFT, "mean")
        gaps = run.gap
        series += [
            shift[evenly_spaced(len(layer.steps), SPARKLINE_POINTS)],
            shift[-1:],
            gaps.local[path][-1:] if gaps is not None and path in gaps.local else [],
            gaps.compound[path][-1:] if gaps is not None and path in gaps.compound else [],
        ]
    encoded = iter(json_value_lists(series))
    return {
        "errors": list(run.errors),
        "gap": _latest_gap(run.gap),
        "layers": [
            _layer_row(layer, findings, steps, *(next(encoded) for _ in range(4)))
            for layer in layers
        ],
    }


def overview_runs(
    source: ExperimentSource, cache: Optional[SeriesCache], runs: Optional[Iterable[str]] = None
) -> Iterator[tuple[str, RunData]]:
    """The runs as the overview and the diagnostics read them (``OVERVIEW_POINTS`` per tag,
    ``OVERVIEW_SNAPSHOTS`` per-channel snapshots per layer), one by one (``iter_runs``).
    """
    return iter_runs(
        source,
        runs=runs,
        downsample=OVERVIEW_POINTS,
        channel_downsample=OVERVIEW_SNAPSHOTS,
        cache=cache,
    )


def _logged_steps(source: ExperimentSource, run: RunData) -> Optional[np.ndarray]:
    """Every logged step of ``run`` if its overview sample was cut short, else ``None``.

    Read in full from one layer (``logged_steps``: steps only, no values
    decoded): a layer's count is the run's steps up to its last one.
    """
    capped = [layer for layer in run.ordered_layers() if len(layer.steps) >= OVERVIEW_POINTS]
    if not capped:
        return None
    return logged_steps(source, {run.run: capped[0].config.path}).get(run.run)


def _layer_row(
    layer: LayerSeries,
    findings: list[diagnostics.Finding],
    run_steps: Optional[np.ndarray],
    sparkline: list[Optional[float]],
    *latest: list[Optional[float]],
) -> dict[str, Any]:
    """A layer's overview row; ``sparkline`` and ``latest`` (drift, local and compound gap)
    encoded by ``json_value_lists``, each latest an empty or 1-element list."""
    config = layer.config
    path = config.path
    drift, local_gap, compound_gap = (values[0] if values else None for values in latest)
    spark = evenly_spaced(len(layer.steps), SPARKLINE_POINTS)
    last_step = int(layer.steps[-1]) if len(layer.steps) else 0
    num_steps = len(layer.steps)
    if run_steps is not None and num_steps >= OVERVIEW_POINTS:
        num_steps = max(num_steps, int(np.searchsorted(run_steps, last_step, side="right")))
    return {
        **{k: getattr(config, k) for k in ROW_CONFIG_FIELDS},
        "trainable": _last_flag(layer.info["trainable"]),
        "training": _last_flag(layer.info["training"]),
        "last_step": last_step,
        "num_steps": num_steps,
        "drift": drift,
        "sparkline": {"steps": layer.steps[spark].tolist(), "values": sparkline},
        "local_gap": local_gap,
        "compound_gap": compound_gap,
        "diagnostics": [
            {"code": f.code, "severity": f.severity} for f in findings if path in f.layers
        ],
    }


def _last_flag(values: np.ndarray) -> bool:
    """Whether a 0/1 info field's last value is set: finite and non-zero (``False`` for an
    empty series). Read directly: encoding two per layer of 1,000 was a tenth of an overview."""
    return bool(len(values)) and bool(np.isfinite(values[-1]) and values[-1] != 0)


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
