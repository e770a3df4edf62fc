"""Reading a ``LayerSeries`` the way the rules need it: trained steps, summary columns, mismatches.

Notation shared by the rules: a *trained step* is a logged step with
``info["training"] == 1``; a *trained snapshot* is a per-channel snapshot at a
trained step; a *marked mismatch* of batch statistics ``(mu_b, var_b)``
against reference statistics ``(mu_r, var_r)`` means, in some channel,
``|mu_b - mu_r| / sqrt(var_r + eps) > mismatch_shift`` or
``|log((var_b + eps) / (var_r + eps))| > mismatch_log_var``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.numerics.drift import log_variance_ratio, normalized_mean_shift
from tb_bn_plugin.series import LayerSeries, RunData


def info(layer: LayerSeries, field: str, default: float) -> np.ndarray:
    """(S,) one info field, ``default`` where it was not logged."""
    values = layer.info.get(field)
    if values is None:
        return np.full(len(layer.steps), default, dtype=np.float64)
    return np.asarray(values, dtype=np.float64)


def trained(layer: LayerSeries) -> np.ndarray:
    return info(layer, "training", 0.0) > 0.5


def momentum(layer: LayerSeries) -> np.ndarray:
    return info(layer, "momentum", layer.config.momentum)


def at_channel_steps(layer: LayerSeries, values: np.ndarray) -> np.ndarray:
    """(T,) per-step ``values`` at the per-channel snapshot steps (NaN where not logged)."""
    values = np.asarray(values, dtype=np.float64)
    rows = layer.snapshot_rows
    if not len(values):
        return np.full(len(rows), np.nan)
    return np.where(rows >= 0, values[np.maximum(rows, 0)], np.nan)


def snapshot_trained(layer: LayerSeries) -> np.ndarray:
    return at_channel_steps(layer, trained(layer).astype(np.float64)) > 0.5


def columns(layer: LayerSeries, stat: str, names: tuple[str, ...]) -> np.ndarray:
    """(S, len(names)) summary columns of ``stat``; NaN when the stat was not logged."""
    if stat not in layer.summary:
        return np.full((len(layer.steps), len(names)), np.nan)
    index = [metadata.SUMMARY_COLUMNS.index(c) for c in names]
    return np.asarray(layer.summary[stat], dtype=np.float64)[:, index]


def extreme(layer: LayerSeries, stat: str) -> np.ndarray:
    """(S,) largest absolute value of ``stat`` over channels (from the min/max columns)."""
    return np.max(np.abs(columns(layer, stat, ("min", "max"))), axis=1)


def marked(shift: np.ndarray, log_var: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Where batch statistics differ markedly from reference ones (NaN never does)."""
    return (np.asarray(shift) > thresholds.mismatch_shift) | (
        np.abs(np.asarray(log_var)) > thresholds.mismatch_log_var
    )


def mismatch(
    batch_mean: np.ndarray,
    batch_variance: np.ndarray,
    ref_mean: np.ndarray | float,
    ref_variance: np.ndarray | float,
    epsilon: float,
    thresholds: Thresholds,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel shift, log variance ratio and marked-mismatch mask against references."""
    shift = normalized_mean_shift(batch_mean, ref_mean, ref_variance, epsilon)
    log_var = log_variance_ratio(batch_variance, ref_variance, epsilon)
    return shift, log_var, marked(shift, log_var, thresholds)


def has_channels(layer: LayerSeries, *stats: str) -> bool:
    return len(layer.channel_steps) > 0 and all(s in layer.channels for s in stats)


def latest_trained_batch_stats(
    layer: LayerSeries,
) -> Optional[tuple[int, np.ndarray, np.ndarray, bool]]:
    """(step, batch_mean, batch_variance, per_channel) at the latest trained snapshot.

    Falls back to the min/max summary columns at the latest trained step
    (``per_channel=False``), which bound every channel's value.
    """
    if has_channels(layer, metadata.BATCH_MEAN, metadata.BATCH_VARIANCE):
        snapshots = np.flatnonzero(snapshot_trained(layer))
        if snapshots.size:
            t = snapshots[-1]
            return (
                int(layer.channel_steps[t]),
                layer.channels[metadata.BATCH_MEAN][t],
                layer.channels[metadata.BATCH_VARIANCE][t],
                True,
            )
    steps = np.flatnonzero(trained(layer))
    if not steps.size:
        return None
    i = steps[-1]
    bounds = ("min", "max")
    return (
        int(layer.steps[i]),
        columns(layer, metadata.BATCH_MEAN, bounds)[i],
        columns(layer, metadata.BATCH_VARIANCE, bounds)[i],
        False,
    )


def moving_at_initial(layer: LayerSeries, atol: float) -> np.ndarray:
    """(S,) whether every channel's moving statistics are within ``atol`` of 0 and 1."""
    bounds = ("min", "max")
    mean = columns(layer, metadata.MOVING_MEAN, bounds)
    variance = columns(layer, metadata.MOVING_VARIANCE, bounds)
    return np.all(np.abs(mean) <= atol, axis=1) & np.all(np.abs(variance - 1.0) <= atol, axis=1)


def layer_index(run: RunData) -> dict[str, int]:
    return {layer.config.path: layer.config.index for layer in run.layers.values()}


def indices(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]
