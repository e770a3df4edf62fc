"""What the BN Internals plugin's routes answer: pure functions, no HTTP.

Each ``*_impl`` takes a ``data.Source`` plus already parsed parameters and
returns a JSON-safe dict (NaN and Inf become ``None``), following the contract
in ``frontend/API.md``. Bad parameters raise ``BadRequest`` (400), unknown runs
or layers ``NotFound`` (404); ``bn_plugin`` turns both into ``{"error": ...}``.

Downsampling happens where the data is read: the data provider returns at
most the requested number of events per tag, always keeping the last logged
step, so a long run costs what is shown rather than what was logged. Over
TensorBoard's Python loader the sample is evenly spaced and keeps the first
step too (``data.MultiplexerProvider``); the Rust data server's is a seeded
random sample, deterministic for the same data. The ``layer`` route reads
``resolution`` summary records and at most that many per-channel snapshots
(fewer for wide layers, ``HEATMAP_CELLS``); the overview, its diagnostics and
the ``diagnostics`` route read ``OVERVIEW_POINTS`` events per tag; the ``gap``
route reads every measurement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

import numpy as np
from tensorboard.data import provider as tb_provider
from tensorboard.plugins.graph import metadata as graph_metadata

from tb_bn_plugin import diagnostics, metadata, records
from tb_bn_plugin.diagnostics.graph import report_graph
from tb_bn_plugin.graph.load import GraphLoadError
from tb_bn_plugin.graph.model import BNSite
from tb_bn_plugin.numerics import drift, ema
from tb_bn_plugin.reading import data
from tb_bn_plugin.reading.graph import read_run_graph
from tb_bn_plugin.series import GapSeries, LayerSeries, RunData

# Events per tag read for the overview and the diagnostics.
OVERVIEW_POINTS = 64
SPARKLINE_POINTS = 64
DEFAULT_RESOLUTION = 1000
MAX_RESOLUTION = 100_000
# Upper bound on channels x snapshot steps per heatmap: wide layers get fewer snapshot columns.
HEATMAP_CELLS = 100_000
# float32 records hold about 7 significant digits.
SIGNIFICANT_DIGITS = 7

_ROW_CONFIG_FIELDS = ("path", "index", "channels", "axis", "momentum", "epsilon", "center", "scale")
_CONFIG_FIELDS = _ROW_CONFIG_FIELDS + ("synchronized", "renorm")
_INFO_FIELDS = ("training", "trainable", "count", "momentum")


class RouteError(Exception):
    """A request the routes cannot answer; ``http_code`` says why."""

    http_code = 500


class BadRequest(RouteError):
    http_code = 400


class NotFound(RouteError):
    http_code = 404


# -- parameters ---------------------------------------------------------------


def required(args: Mapping[str, str], name: str) -> str:
    """The non-empty string parameter ``name``."""
    value = args.get(name)
    if not value:
        raise BadRequest(f"missing parameter {name!r}")
    return value


def int_param(
    args: Mapping[str, str],
    name: str,
    default: Optional[int],
    minimum: int,
    maximum: Optional[int] = None,
) -> Optional[int]:
    """The integer parameter ``name`` within [minimum, maximum], or ``default`` when absent."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise BadRequest(f"parameter {name!r} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise BadRequest(f"parameter {name!r} must be {bound}, got {value}")
    return value


# -- JSON helpers -------------------------------------------------------------


def json_values(values: Any) -> Any:
    """A float array (any rank) or scalar as nested lists of floats, NaN/Inf as ``None``.

    Values are rounded to ``SIGNIFICANT_DIGITS``, the precision of the float32
    records they come from: shorter JSON, and serialising it is faster.
    """
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    out = round_significant(np.where(finite, array, 0.0)).astype(object)
    out[~finite] = None
    return out.tolist()


def round_significant(x: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """``x`` rounded to ``digits`` significant decimal digits (the nearest doubles, so they print short)."""
    magnitude = np.floor(np.log10(np.abs(x), out=np.zeros_like(x), where=x != 0))
    decimals = digits - 1 - magnitude
    with np.errstate(over="ignore", invalid="ignore"):
        scale = 10.0 ** np.abs(decimals)  # exact up to 10**22; beyond, x stays as it is
        rounded = np.where(decimals >= 0, np.round(x * scale) / scale, np.round(x / scale) * scale)
    return np.where(np.abs(decimals) <= 22, rounded, x)


def _last(values: np.ndarray) -> Optional[float]:
    return json_values(values[-1]) if len(values) else None


# -- runs (overview) ----------------------------------------------------------


def runs_impl(source: data.Source, cache: Optional[data.SeriesCache] = None) -> dict[str, Any]:
    """The overview: every run with BN Internals data or a graph, its layers, gap and diagnostic codes."""
    runs = _overview_runs(source, cache)
    graph_runs = _graph_runs(source)
    steps = _logged_steps(source, runs, cache)
    rows = []
    for name in sorted(set(runs) | graph_runs):
        run = runs.get(name) or RunData(run=name, layers={})
        findings = diagnostics.diagnose(run)
        rows.append(
            {
                "run": name,
                "has_graph": name in graph_runs,
                "errors": list(run.errors),
                "gap": _latest_gap(run.gap),
                "layers": [
                    _layer_row(layer, run.gap, findings, steps.get(name))
                    for layer in run.ordered_layers()
                ],
            }
        )
    return {"runs": rows}


def _overview_runs(
    source: data.Source, cache: Optional[data.SeriesCache], runs: Optional[Iterable[str]] = None
) -> dict[str, RunData]:
    return data.load_runs(source, runs=runs, downsample=OVERVIEW_POINTS, cache=cache)


def _logged_steps(
    source: data.Source, runs: Mapping[str, RunData], cache: Optional[data.SeriesCache]
) -> dict[str, np.ndarray]:
    """Every logged step of each run whose overview sample was cut short.

    Read in full from one layer only: the writers log all layers of a run at
    the same steps, so a layer's count is the run's steps up to its last one.
    """
    steps = {}
    for name, run in runs.items():
        capped = [layer for layer in run.ordered_layers() if len(layer.steps) >= OVERVIEW_POINTS]
        if capped:
            reference = capped[0].config.path
            full = data.load_runs(
                source,
                runs=[name],
                layers=[reference],
                with_channels=False,
                with_gap=False,
                cache=cache,
            ).get(name)
            if full is not None and reference in full.layers:
                steps[name] = full.layers[reference].steps
    return steps


def _layer_row(
    layer: LayerSeries,
    gap: Optional[GapSeries],
    findings: list[diagnostics.Finding],
    run_steps: Optional[np.ndarray],
) -> dict[str, Any]:
    config = layer.config
    path = config.path
    shift = layer.summary_column(metadata.MEAN_SHIFT, "mean")
    spark = data.evenly_spaced(len(layer.steps), SPARKLINE_POINTS)
    last_step = int(layer.steps[-1]) if len(layer.steps) else 0
    num_steps = len(layer.steps)
    if run_steps is not None and num_steps >= OVERVIEW_POINTS:
        num_steps = max(num_steps, int(np.searchsorted(run_steps, last_step, side="right")))
    return {
        **{k: getattr(config, k) for k in _ROW_CONFIG_FIELDS},
        "trainable": bool(_last(layer.info["trainable"])),
        "training": bool(_last(layer.info["training"])),
        "last_step": last_step,
        "num_steps": num_steps,
        "drift": _last(shift),
        "sparkline": {"steps": layer.steps[spark].tolist(), "values": json_values(shift[spark])},
        "local_gap": _last(gap.local[path]) if gap is not None and path in gap.local else None,
        "compound_gap": _last(gap.compound[path])
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
        "train_loss": _last(gap.train_loss),
        "inference_loss": _last(gap.inference_loss),
        "metrics": {
            name: {mode: _last(v) for mode, v in modes.items()}
            for name, modes in gap.metrics.items()
        },
    }


def _graph_runs(source: data.Source) -> set[str]:
    """Runs with a stored run graph (what ``read_run_graph`` reads)."""
    listing = source.provider.list_blob_sequences(
        source.ctx,
        experiment_id=source.experiment_id,
        plugin_name=graph_metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(tags=[graph_metadata.RUN_GRAPH_NAME]),
    )
    return {run for run, tags in listing.items() if graph_metadata.RUN_GRAPH_NAME in tags}


def _check_run(source: data.Source, run: str) -> None:
    runs = source.provider.list_runs(source.ctx, experiment_id=source.experiment_id)
    if run not in {r.run_name for r in runs}:
        raise NotFound(f"unknown run {run!r}")


# -- layer --------------------------------------------------------------------


def layer_impl(
    source: data.Source,
    run: str,
    layer: str,
    resolution: int = DEFAULT_RESOLUTION,
    channel: Optional[int] = None,
    cache: Optional[data.SeriesCache] = None,
) -> dict[str, Any]:
    """One layer's statistics over every logged step, downsampled to ``resolution`` points."""
    run_data = data.load_runs(
        source,
        runs=[run],
        layers=[layer],
        downsample=resolution,
        channel_downsample=lambda config: _heatmap_columns(config.channels, resolution),
        with_gap=False,
        cache=cache,
    ).get(run)
    series = run_data.layers.get(layer) if run_data is not None else None
    if series is None:
        _check_run(source, run)
        problems = "; ".join(run_data.errors) if run_data is not None else ""
        raise NotFound(
            f"run {run!r} has no readable layer {layer!r}" + (f" ({problems})" if problems else "")
        )
    config = series.config
    if channel is not None and channel >= config.channels:
        raise BadRequest(
            f"channel {channel} out of range: layer {layer!r} has {config.channels} channels"
        )

    picked = data.evenly_spaced(len(series.steps), resolution)
    steps = series.steps[picked]
    momentum = series.info["momentum"][picked]
    columns = list(enumerate(metadata.SUMMARY_COLUMNS))

    snapshots = data.evenly_spaced(
        len(series.channel_steps), _heatmap_columns(config.channels, resolution)
    )
    values = {stat: v[snapshots] for stat, v in series.channels.items()}
    if len(snapshots):
        values.update(records.drift_rows(values, config.epsilon))
    else:
        values.update({stat: np.empty((0, config.channels)) for stat in metadata.DRIFT_STATS})

    return {
        "run": run,
        "layer": layer,
        "config": {k: getattr(config, k) for k in _CONFIG_FIELDS},
        "steps": steps.tolist(),
        "summary": {
            stat: {name: json_values(table[picked, j]) for j, name in columns}
            for stat, table in series.summary.items()
        },
        "info": {field: json_values(series.info[field][picked]) for field in _INFO_FIELDS},
        "ema_initial_weight": json_values(drift.ema_initial_weight(momentum, steps)),
        "channel_steps": series.channel_steps[snapshots].tolist(),
        "heatmaps": {stat: json_values(values[stat].T) for stat in metadata.DRIFT_STATS},
        "channel": None
        if channel is None
        else {
            "index": channel,
            "values": {stat: json_values(v[:, channel]) for stat, v in values.items()},
        },
        "ema_error": _ema_error_json(run_data.ema_error.get(layer), resolution),
    }


def _ema_error_json(
    series: Optional[tuple[np.ndarray, np.ndarray]], resolution: int
) -> Optional[dict[str, Any]]:
    """A layer's ``PreciseStatsMonitor`` measurements (``None`` when not logged) and the ``ema-error`` thresholds."""
    if series is None:
        return None
    steps, values = series
    picked = data.evenly_spaced(len(steps), resolution)
    thresholds = diagnostics.Thresholds()
    return {
        "steps": steps[picked].tolist(),
        "fields": {
            name: json_values(values[picked, j]) for j, name in enumerate(ema.EmaError.FIELDS)
        },
        "thresholds": {
            "max_mean_shift": thresholds.mismatch_shift,
            "max_abs_log_var_ratio": thresholds.mismatch_log_var,
        },
    }


def _heatmap_columns(channels: int, resolution: int) -> int:
    """Snapshot steps shown in a layer's heatmap: at most ``resolution``, fewer for wide layers."""
    return min(resolution, max(2, HEATMAP_CELLS // max(channels, 1)))


# -- gap ----------------------------------------------------------------------


def gap_impl(source: data.Source, run: str) -> dict[str, Any]:
    """Every logged train/inference gap measurement of ``run`` (empty arrays when none)."""
    tags, errors = data.list_tags(source, [run], [metadata.gap_tag()])
    gap = None
    if tags.get(run):
        tag = tags[run][0]
        events = data.read_tensors(source, {run: [tag.tag]})[run][tag.tag]
        try:
            gap = data.gap_series(tag, events)
        except (ValueError, KeyError, TypeError) as err:
            raise NotFound(f"run {run!r} has no readable gap data ({err})") from None
    elif not errors.get(run):
        _check_run(source, run)
    if gap is None:
        return {
            "run": run,
            "steps": [],
            "train_loss": [],
            "inference_loss": [],
            "metrics": {},
            "layers": {},
        }
    per_layer = {
        "compound": gap.compound,
        "local": gap.local,
        "local_derived": gap.local_derived,
        "attribution": gap.attribution,
    }
    paths = sorted(set().union(*(by_path.keys() for by_path in per_layer.values())))
    nan = np.full(len(gap.steps), np.nan)
    return {
        "run": run,
        "steps": gap.steps.tolist(),
        "train_loss": json_values(gap.train_loss),
        "inference_loss": json_values(gap.inference_loss),
        "metrics": {
            name: {mode: json_values(v) for mode, v in modes.items()}
            for name, modes in gap.metrics.items()
        },
        "layers": {
            path: {
                field: json_values(by_path.get(path, nan)) for field, by_path in per_layer.items()
            }
            for path in paths
        },
    }


# -- diagnostics --------------------------------------------------------------


def diagnostics_impl(
    source: data.Source, run: Optional[str] = None, cache: Optional[data.SeriesCache] = None
) -> dict[str, Any]:
    """Findings of one run or of all runs, from the same samples as the overview."""
    runs = _overview_runs(source, cache, [run] if run is not None else None)
    if run is not None and run not in runs:
        _check_run(source, run)
    return {
        "diagnostics": [
            {"run": name, **finding.to_json()}
            for name, run_data in sorted(runs.items())
            for finding in diagnostics.diagnose(run_data)
        ]
    }


# -- graph --------------------------------------------------------------------


def graph_impl(source: data.Source, run: str) -> dict[str, Any]:
    """The BatchNorm sites and graph-level findings of ``run``'s stored graph."""
    try:
        graph = read_run_graph(source.provider, source.ctx, source.experiment_id, run)
    except GraphLoadError as err:
        return {"run": run, "sites": [], "findings": [], "error": str(err)}
    if graph is None:
        _check_run(source, run)
        return {
            "run": run,
            "sites": [],
            "findings": [],
            "error": f"run {run!r} has no graph; write one with tb_bn_plugin.graph_io.write_graph "
            "or tf.summary.graph",
        }
    report = report_graph(graph)
    return {
        "run": run,
        "sites": [_site_json(site) for site in report.sites],
        "findings": [_graph_finding_json(finding) for finding in report.findings],
        "error": None,
    }


def _site_json(site: BNSite) -> dict[str, Any]:
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


def _graph_finding_json(finding: diagnostics.Finding) -> dict[str, Any]:
    """A graph finding: its layers are ``sites``; evidence is keyed by site (or numbered)."""
    return {
        "code": finding.code,
        "severity": finding.severity,
        "title": finding.title,
        "sites": finding.layers,
        "evidence": finding.evidence,
        "fix": finding.fix,
    }
