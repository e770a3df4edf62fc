"""The ``layer`` route: one layer's statistics over its logged steps, its heatmaps and EMA error."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import numpy as np
from tensorboard import errors

from tb_bn_plugin import diagnostics, metadata, records
from tb_bn_plugin.diagnostics.batches import replica_batch_too_small, shared_layer
from tb_bn_plugin.numerics import drift, ema
from tb_bn_plugin.numerics.moments import call_divergence
from tb_bn_plugin.plugin.routes.encoding import json_values
from tb_bn_plugin.plugin.routes.graph import layer_sites
from tb_bn_plugin.plugin.routes.params import check_run
from tb_bn_plugin.plugin.routes.runs import ROW_CONFIG_FIELDS
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.load import load_runs
from tb_bn_plugin.reading.provider import ExperimentSource, evenly_spaced
from tb_bn_plugin.series import EmaErrorSeries, LayerSeries, RunData

DEFAULT_RESOLUTION = 1000
MAX_RESOLUTION = 100_000
# Upper bound on channels x snapshot steps per heatmap: wide layers get fewer snapshot columns.
HEATMAP_CELLS = 100_000

_CONFIG_FIELDS = ROW_CONFIG_FIELDS + ("synchronized", "renorm")
_INFO_FIELDS = ("training", "trainable", "count", "momentum")


def layer_impl(
    source: ExperimentSource,
    run: str,
    layer: str,
    resolution: int = DEFAULT_RESOLUTION,
    channel: Optional[int] = None,
    cache: Optional[SeriesCache] = None,
) -> dict[str, Any]:
    """One layer's statistics over every logged step, downsampled to ``resolution`` points."""
    run_data = load_runs(
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
        check_run(source, run)
        problems = "; ".join(run_data.errors) if run_data is not None else ""
        raise errors.NotFoundError(
            f"run {run!r} has no readable layer {layer!r}" + (f" ({problems})" if problems else "")
        )
    config = series.config
    if channel is not None and channel >= config.channels:
        raise errors.InvalidArgumentError(
            f"channel {channel} out of range: layer {layer!r} has {config.channels} channels"
        )

    picked = evenly_spaced(len(series.steps), resolution)
    steps = series.steps[picked]
    momentum = series.info["momentum"][picked]

    snapshots = evenly_spaced(
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
        "summary": summary_json(series, picked),
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
        "replicas": _replicas_json(run_data, series, resolution),
        "calls": _calls_json(run_data, series, resolution),
        "graph_sites": layer_sites(source, run, layer, cache),
    }


def summary_json(
    series: LayerSeries, picked: np.ndarray, stats: Optional[Iterable[str]] = None
) -> dict[str, dict[str, Any]]:
    """Each statistic (or those of ``stats`` the layer has) across channels at ``picked``."""
    columns = list(enumerate(metadata.SUMMARY_COLUMNS))
    wanted = series.summary.keys() if stats is None else [s for s in stats if s in series.summary]
    return {
        stat: {name: json_values(series.summary[stat][picked, j]) for j, name in columns}
        for stat in wanted
    }


def _replicas_json(
    run_data: RunData, series: LayerSeries, resolution: int
) -> Optional[dict[str, Any]]:
    """Per-replica batch statistics (means over channels) beside the global ones, and the layer's
    ``replica-batch-too-small`` finding; ``None`` when per-replica statistics were not logged.
    """
    replicas = series.replicas
    if replicas is None or not len(replicas.steps):
        return None
    picked = evenly_spaced(len(replicas.steps), resolution)
    combined = replicas.global_moments()
    finding = next(
        (f for f in replica_batch_too_small(run_data) if series.config.path in f.layers),
        None,
    )
    return {
        "steps": replicas.steps[picked].tolist(),
        # (P, R) -> one list per replica.
        "count": json_values(replicas.count[picked].T),
        "batch_mean": json_values(replicas.mean[picked].mean(axis=2).T),
        "batch_variance": json_values(replicas.variance[picked].mean(axis=2).T),
        "global": {
            "batch_mean": json_values(combined.mean[picked].mean(axis=1)),
            "batch_variance": json_values(combined.variance[picked].mean(axis=1)),
        },
        "finding": finding.to_json() if finding is not None else None,
    }


def _calls_json(
    run_data: RunData, series: LayerSeries, resolution: int
) -> Optional[dict[str, Any]]:
    """Per-call batch statistics (means over channels) of a layer called several times per step,
    the calls' divergence (``call_divergence``, median over channels) and the layer's
    ``shared-layer`` finding; ``None`` for a layer called once per step.
    """
    calls = series.calls
    if calls is None or not len(calls.steps):
        return None
    picked = evenly_spaced(len(calls.steps), resolution)
    shift, log_var = call_divergence(
        calls.mean[picked], calls.variance[picked], series.config.epsilon
    )
    finding = next(
        (f for f in shared_layer(run_data) if series.config.path in f.layers),
        None,
    )
    thresholds = diagnostics.Thresholds()
    return {
        "steps": calls.steps[picked].tolist(),
        # (P, K) -> one list per call.
        "count": json_values(calls.count[picked].T),
        "batch_mean": json_values(calls.mean[picked].mean(axis=2).T),
        "batch_variance": json_values(calls.variance[picked].mean(axis=2).T),
        "mean_shift": json_values(np.median(shift, axis=1)),
        "log_var_ratio": json_values(np.median(log_var, axis=1)),
        "thresholds": {
            "mean_shift": thresholds.shared_layer_shift,
            "log_var_ratio": thresholds.shared_layer_log_var,
        },
        "finding": finding.to_json() if finding is not None else None,
    }


def _ema_error_json(series: Optional[EmaErrorSeries], resolution: int) -> Optional[dict[str, Any]]:
    """A layer's ``PreciseStatsMonitor`` measurements and the ``ema-error`` thresholds.

    ``None`` when the layer's EMA error was not logged.
    """
    if series is None:
        return None
    picked = evenly_spaced(len(series.steps), resolution)
    thresholds = diagnostics.Thresholds()
    return {
        "steps": series.steps[picked].tolist(),
        "fields": {name: json_values(series.values[name][picked]) for name in ema.EmaError.FIELDS},
        "thresholds": {
            "max_mean_shift": thresholds.mismatch_shift,
            "max_abs_log_var_ratio": thresholds.mismatch_log_var,
        },
    }


def _heatmap_columns(channels: int, resolution: int) -> int:
    """Snapshot steps shown in a layer's heatmap: at most ``resolution``, fewer for wide layers."""
    return min(resolution, max(2, HEATMAP_CELLS // max(channels, 1)))
