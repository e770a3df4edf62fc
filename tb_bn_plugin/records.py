"""The numeric layout of every logged payload: pure numpy, no TensorFlow.

A logged step keeps, for every layer, a compact *summary record* (scalar facts
plus statistics across channels of every per-channel quantity) and, on
*snapshot* steps, the full per-channel vectors. The snapshot cadence is chosen
so the bytes written per logged step stay within a budget.

The ``gap``, ``ema_error`` and ``step_functions`` payloads are decoded here too (their sections
below), from records already stacked by the reader (``reading.decode``) into
``series`` dataclasses; the layouts themselves are described in ``metadata``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.numerics import drift
from tb_bn_plugin.numerics.ema import EmaError
from tb_bn_plugin.series import EmaErrorSeries, GapSeries, LayerConfig, StepFunctions

_QUANTILES = (0.05, 0.5, 0.95)
# Approximate bytes an event adds beyond its tensor payload (tag, step, wall time, framing).
EVENT_OVERHEAD_BYTES = 96


def drift_rows(
    values: Mapping[str, np.ndarray], epsilon: float | np.ndarray
) -> dict[str, np.ndarray]:
    """Per-channel drift quantities (``metadata.DRIFT_STATS``) from statistics of any leading shape.

    ``epsilon`` is a float or an array broadcasting against the statistics.
    """
    return {
        metadata.MEAN_SHIFT: drift.normalized_mean_shift(
            values[metadata.BATCH_MEAN],
            values[metadata.MOVING_MEAN],
            values[metadata.MOVING_VARIANCE],
            epsilon,
        ),
        metadata.LOG_VAR_RATIO: drift.log_variance_ratio(
            values[metadata.BATCH_VARIANCE], values[metadata.MOVING_VARIANCE], epsilon
        ),
    }


def summary_stats(config: LayerConfig) -> tuple[str, ...]:
    """Rows of a layer's summary record, in storage order."""
    return config.stats() + metadata.DRIFT_STATS


def summarize_across_channels(matrix: np.ndarray) -> np.ndarray:
    """(R, C) per-channel rows -> (R, Q) statistics across channels (``SUMMARY_COLUMNS``).

    The order statistics come from one sort of each row: min and max are its
    ends, and quantile q is numpy's default ("linear") estimate, the value at
    fractional position ``h = q (C - 1)`` of the sorted row,
    ``a + t (b - a)`` with ``a = s[floor(h)]``, ``b = s[floor(h) + 1]``,
    ``t = h - floor(h)``, taken as ``b - (1 - t)(b - a)`` where ``t >= 1/2`` (numpy's
    own rounding). It equals ``np.quantile(matrix, q, axis=1)`` bit for bit at a
    fraction of its cost: a logged step runs it between training steps, where
    every distinct numpy routine it calls is paid for again once its code has gone
    cold (``benchmarks/README.md``).

    A row containing NaN summarises to NaN in every column.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    channels = matrix.shape[1]
    ordered = np.sort(matrix, axis=1)
    position = np.asarray(_QUANTILES) * (channels - 1)
    below = np.floor(position).astype(np.intp)
    above = np.minimum(below + 1, channels - 1)
    fraction = position - below
    with np.errstate(invalid="ignore"):  # inf - inf between infinite neighbours: NaN
        low, high = ordered[:, below], ordered[:, above]
        quantiles = np.where(
            fraction >= 0.5, high - (1 - fraction) * (high - low), low + fraction * (high - low)
        )
        summary = np.concatenate(
            [
                matrix.mean(axis=1, keepdims=True),
                matrix.std(axis=1, keepdims=True),
                ordered[:, :1],
                quantiles,
                ordered[:, -1:],
            ],
            axis=1,
        )
    # np.sort puts NaN last, where the max is read: the statistics below it would hide it.
    summary[np.isnan(ordered[:, -1])] = np.nan
    return summary


def summary_records(
    configs: Sequence[LayerConfig],
    values: Sequence[Mapping[str, np.ndarray]],
    infos: Sequence[Mapping[str, float]],
) -> list[np.ndarray]:
    """The flat float32 summary record of each layer at one step.

    Layout of one record: ``INFO_FIELDS`` values, then the (R, Q) summary of
    ``summary_stats(config)`` in row-major order. Layers of equal width are
    summarised together in one call per width, so the cost grows with the
    number of channels and of distinct widths, not with one numpy round per layer.
    """
    out: list[np.ndarray] = [np.empty(0, np.float32)] * len(configs)
    by_width: dict[int, list[int]] = {}
    for i, config in enumerate(configs):
        by_width.setdefault(config.channels, []).append(i)
    for members in by_width.values():
        stacked = {
            stat: np.stack([values[i][stat] for i in members])
            for stat in (
                metadata.BATCH_MEAN,
                metadata.BATCH_VARIANCE,
                metadata.MOVING_MEAN,
                metadata.MOVING_VARIANCE,
            )
        }
        epsilon = np.array([[configs[i].epsilon] for i in members])
        drifts = drift_rows(stacked, epsilon)
        matrices = [
            np.stack(
                [values[i][stat] for stat in configs[i].stats()]
                + [drifts[stat][k] for stat in metadata.DRIFT_STATS]
            )
            for k, i in enumerate(members)
        ]
        summaries = np.split(
            summarize_across_channels(np.concatenate(matrices)),
            np.cumsum([len(m) for m in matrices])[:-1],
        )
        for i, summary in zip(members, summaries):
            head = np.array([infos[i][f] for f in metadata.INFO_FIELDS], dtype=np.float64)
            out[i] = np.concatenate([head, summary.ravel()]).astype(np.float32)
    return out


def summary_record_width(config: LayerConfig) -> int:
    """Values in one summary record of ``config``'s layer."""
    return len(metadata.INFO_FIELDS) + len(summary_stats(config)) * len(metadata.SUMMARY_COLUMNS)


def split_summary_record(
    config: LayerConfig, record: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of ``summary_records``, for one record (W,) or a stack of them (S, W).

    Returns (info: field -> () or (S,), summary: stat -> (Q,) or (S, Q)), float64.
    """
    record = np.asarray(record, dtype=np.float64)
    n_info, q = len(metadata.INFO_FIELDS), len(metadata.SUMMARY_COLUMNS)
    info = {f: record[..., i] for i, f in enumerate(metadata.INFO_FIELDS)}
    summary = {
        s: record[..., n_info + i * q : n_info + (i + 1) * q]
        for i, s in enumerate(summary_stats(config))
    }
    return info, summary


def channel_record(
    config: LayerConfig, values: Mapping[str, np.ndarray], dtype: np.dtype
) -> np.ndarray:
    """The (R, C) per-channel snapshot of ``config.stats()``."""
    return np.stack([values[s] for s in config.stats()]).astype(dtype)


def replica_record(count: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """The (R, 1 + 2C) float32 ``layer_replicas`` record: per replica a count, (C,) moments.

    Also the ``layer_calls`` record, with one row per call instead of per replica.
    """
    count = np.asarray(count, dtype=np.float64)[:, None]
    return np.concatenate([count, np.asarray(mean), np.asarray(variance)], axis=1).astype(
        np.float32
    )


def split_replica_record(
    record: np.ndarray, channels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``replica_record`` for one record (R, W) or a stack (S, R, W).

    Returns count, mean, variance (float64).
    """
    record = np.asarray(record, dtype=np.float64)
    return (
        record[..., 0],
        record[..., 1 : 1 + channels],
        record[..., 1 + channels : 1 + 2 * channels],
    )


def replica_bytes(configs: Sequence[LayerConfig], replicas: int) -> int:
    """Bytes the ``layer_replicas`` records of all layers add to a snapshot (0 on one replica)."""
    if replicas <= 1:
        return 0
    per_value = np.dtype(np.float32).itemsize
    return sum(
        EVENT_OVERHEAD_BYTES + per_value * replicas * (1 + 2 * c.channels)
        for c in configs
        if not c.synchronized
    )


def summary_bytes(configs: Sequence[LayerConfig]) -> int:
    """Bytes the summary records of all layers take per logged step."""
    per_value = np.dtype(np.float32).itemsize
    return sum(
        EVENT_OVERHEAD_BYTES
        + per_value
        * (len(metadata.INFO_FIELDS) + len(summary_stats(c)) * len(metadata.SUMMARY_COLUMNS))
        for c in configs
    )


def channel_bytes(configs: Sequence[LayerConfig], dtype: np.dtype) -> int:
    """Bytes one per-channel snapshot of all layers takes."""
    item = np.dtype(dtype).itemsize
    return sum(EVENT_OVERHEAD_BYTES + item * len(c.stats()) * c.channels for c in configs)


def check_logging_options(
    log_every_n_steps: int, channel_dtype: str, max_bytes_per_log: int
) -> None:
    """Raise ``ValueError`` naming the first invalid logging option."""
    if not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
        raise ValueError(f"log_every_n_steps must be a positive integer, got {log_every_n_steps!r}")
    if channel_dtype not in ("float32", "float16"):
        raise ValueError(f"channel_dtype must be 'float32' or 'float16', got {channel_dtype!r}")
    if not isinstance(max_bytes_per_log, int) or max_bytes_per_log < 1:
        raise ValueError(f"max_bytes_per_log must be a positive integer, got {max_bytes_per_log!r}")


def snapshot_interval(
    configs: Sequence[LayerConfig], dtype: np.dtype, budget_bytes: int, replicas: int = 1
) -> int:
    """Every how many logged steps a snapshot fits ``budget_bytes`` per logged step on average.

    1 when snapshots fit at every logged step. When even summaries exceed
    the budget, snapshots are spaced as if a tenth of the budget remained.
    A snapshot on ``replicas`` > 1 replicas includes the ``layer_replicas`` records.
    """
    remaining = max(budget_bytes - summary_bytes(configs), budget_bytes // 10, 1)
    snapshot = channel_bytes(configs, dtype) + replica_bytes(configs, replicas)
    return max(1, math.ceil(snapshot / remaining))


class SnapshotCadence:
    """Which logged steps carry a per-channel snapshot.

    Every ``interval``-th logged step, counted from the latest snapshot (forced
    ones, e.g. at epoch ends, included, so the average stays within budget);
    the first logged step always snapshots.
    """

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self._since = interval

    def next(self, force: bool = False) -> bool:
        """Whether the next logged step snapshots; ``force`` makes it one."""
        snapshot = force or self._since + 1 >= self.interval
        self._since = 0 if snapshot else self._since + 1
        return snapshot


# -- layer payloads: metadata content (encoding) ----------------------------------


def layer_summary_content(config: LayerConfig) -> dict[str, Any]:
    """The metadata content of a layer's ``layer_summary`` tag (``summary_records``)."""
    return {
        "kind": metadata.KIND_LAYER_SUMMARY,
        "layer": config.to_json(),
        "info": list(metadata.INFO_FIELDS),
        "rows": list(summary_stats(config)),
        "columns": list(metadata.SUMMARY_COLUMNS),
    }


def layer_channels_content(config: LayerConfig) -> dict[str, Any]:
    """The metadata content of a layer's ``layer_channels`` tag (``channel_record``)."""
    return {
        "kind": metadata.KIND_LAYER_CHANNELS,
        "layer": config.to_json(),
        "rows": list(config.stats()),
    }


def layer_replicas_content(config: LayerConfig, replicas: int) -> dict[str, Any]:
    """The metadata content of a layer's ``layer_replicas`` tag (``replica_record``)."""
    return {
        "kind": metadata.KIND_LAYER_REPLICAS,
        "layer": config.to_json(),
        "replicas": replicas,
        "columns": list(metadata.REPLICA_COLUMNS),
    }


def layer_calls_content(config: LayerConfig, calls: int) -> dict[str, Any]:
    """The metadata content of a layer's ``layer_calls`` tag (``replica_record``, row per call)."""
    return {
        "kind": metadata.KIND_LAYER_CALLS,
        "layer": config.to_json(),
        "calls": calls,
        "columns": list(metadata.CALL_COLUMNS),
    }


# -- gap payload: encoding ------------------------------------------------------


def gap_record(
    train_losses: np.ndarray,
    inference_losses: np.ndarray,
    train_metrics: np.ndarray,
    inference_metrics: np.ndarray,
    layer_values: np.ndarray,
) -> np.ndarray:
    """The flat float32 tensor stored under ``metadata.gap_tag()`` (layout in ``metadata``).

    ``train_losses``/``inference_losses`` (L,), ``train_metrics``/``inference_metrics``
    (M,), ``layer_values`` (N, F) with F = ``metadata.GAP_LAYER_FIELDS``.
    """
    return np.concatenate(
        [
            np.asarray(train_losses).ravel(),
            np.asarray(inference_losses).ravel(),
            np.asarray(train_metrics).ravel(),
            np.asarray(inference_metrics).ravel(),
            np.asarray(layer_values).ravel(),
        ]
    ).astype(np.float32)


def gap_content(
    losses: Sequence[str],
    metrics: Sequence[str],
    layers: Sequence[str],
    probe_size: int,
    scope: str,
    kind: str = metadata.KIND_GAP,
) -> dict[str, Any]:
    """The metadata content of a ``gap_record``'s layout (``gap`` or ``ema_weights_gap``)."""
    return {
        "kind": kind,
        "losses": list(losses),
        "metrics": list(metrics),
        "layers": list(layers),
        "layer_fields": list(metadata.GAP_LAYER_FIELDS),
        "probe_size": int(probe_size),
        "scope": scope,
    }


# -- step_functions payload: encoding and decoding ---------------------------------


def step_functions_record(updates_applied: Sequence[Optional[bool]]) -> np.ndarray:
    """The float32 (N,) tensor stored under ``metadata.step_functions_tag()``: 1, 0 or NaN."""
    return np.asarray(
        [np.nan if applied is None else float(applied) for applied in updates_applied],
        dtype=np.float32,
    )


def step_functions_content(
    backend: str,
    train_function: str,
    inference_function: str,
    layers: Sequence[str],
    momentum: Sequence[float],
    moving_variables: Sequence[Sequence[str]],
) -> dict[str, Any]:
    """The metadata content of the ``step_functions`` tag (layout in ``metadata``)."""
    return {
        "kind": metadata.KIND_STEP_FUNCTIONS,
        "backend": backend,
        "train_function": train_function,
        "inference_function": inference_function,
        "layers": list(layers),
        "momentum": [float(m) for m in momentum],
        "moving_variables": [list(names) for names in moving_variables],
    }


def decode_step_functions(
    content: Mapping[str, Any], step: int, record: np.ndarray
) -> StepFunctions:
    """A ``StepFunctions`` from the tag's content and one event's tensor (``ValueError`` on a
    tensor that does not match the layers)."""
    layers = [str(path) for path in content["layers"]]
    values = np.asarray(record, dtype=np.float64).ravel()
    if values.size != len(layers):
        raise ValueError(f"step_functions holds {values.size} values for {len(layers)} layers")
    return StepFunctions(
        step=int(step),
        backend=str(content["backend"]),
        train_function=str(content["train_function"]),
        inference_function=str(content["inference_function"]),
        layers=layers,
        momentum=[float(m) for m in content["momentum"]],
        moving_variables=[[str(name) for name in names] for names in content["moving_variables"]],
        updates_applied=[None if np.isnan(v) else bool(v) for v in values],
    )


# -- ema_error payload: encoding -------------------------------------------------


def ema_error_record(error: EmaError) -> np.ndarray:
    """The float32 vector of ``EmaError.FIELDS`` stored under ``metadata.ema_error_tag(path)``."""
    return error.as_array()


def ema_error_content(layer_path: str) -> dict[str, Any]:
    """The metadata content of one layer's ``ema_error`` tag."""
    return {
        "kind": metadata.KIND_EMA_ERROR,
        "layer_path": layer_path,
        "fields": list(EmaError.FIELDS),
    }


@dataclasses.dataclass
class LayerSnapshot:
    """One layer's state after a training step, as numpy.

    ``values`` maps each of the layer's ``CHANNEL_STATS`` to a (C,) float64
    vector; batch statistics are NaN when the layer did not normalise with
    batch statistics in that step (``training`` False).
    """

    config: LayerConfig
    values: dict[str, np.ndarray]
    training: bool
    trainable: bool
    count: float
    momentum: float
    # Unsynchronised layers on several replicas, at training steps: (count (R,), mean (R, C),
    # variance (R, C)) of every replica; replica 0's are also in ``values``/``count``.
    replicas: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None
    # Layers called several times in the step, at training steps: (count (K,), mean (K, C),
    # variance (K, C)) of every call in order; call 0's are also in ``values``/``count``.
    calls: Optional[tuple[np.ndarray, np.ndarray, np.ndarray]] = None


# -- gap payload: decoding -------------------------------------------------------------


def gap_record_width(content: Mapping[str, Any]) -> int:
    """Values in one ``gap`` record laid out as its metadata ``content`` says (see ``metadata``)."""
    losses, metrics = content.get("losses", []), content.get("metrics", [])
    fields = content.get("layer_fields", metadata.GAP_LAYER_FIELDS)
    return 2 * len(losses) + 2 * len(metrics) + len(content.get("layers", [])) * len(fields)


def decode_gap(
    content: Mapping[str, Any],
    steps: np.ndarray,
    table: np.ndarray,
    layers: Optional[Iterable[str]] = None,
) -> GapSeries:
    """The ``GapSeries`` of ``gap`` records: (G,) ``steps``, (G, ``gap_record_width``) ``table``.

    ``train_loss``/``inference_loss`` are the ``loss`` entry (NaN when absent);
    further losses (per output of multi-output models) join ``metrics`` under
    their names. ``layers`` keeps only these layer paths. Fields the content does
    not list are NaN. Raises ``ValueError`` when ``table`` does not fit the layout.
    """
    losses = list(content.get("losses", []))
    metric_names = list(content.get("metrics", []))
    paths = list(content.get("layers", []))
    fields = list(content.get("layer_fields", metadata.GAP_LAYER_FIELDS))
    n_loss, n_metric, g = len(losses), len(metric_names), len(steps)
    table = np.asarray(table, dtype=np.float64)
    if table.shape != (g, gap_record_width(content)):
        raise ValueError(
            f"gap records of shape {table.shape}, layout expects {(g, gap_record_width(content))}"
        )
    train_losses, table = table[:, :n_loss], table[:, n_loss:]
    inference_losses, table = table[:, :n_loss], table[:, n_loss:]
    train_metrics, table = table[:, :n_metric], table[:, n_metric:]
    inference_metrics, table = table[:, :n_metric], table[:, n_metric:]
    per_layer = table.reshape(g, len(paths), len(fields))
    nan = np.full(g, np.nan)

    def column(names: list[str], matrix: np.ndarray, name: str) -> np.ndarray:
        return matrix[:, names.index(name)].copy() if name in names else nan.copy()

    metrics = {
        name: {"train": train_metrics[:, i].copy(), "inference": inference_metrics[:, i].copy()}
        for i, name in enumerate(metric_names)
    }
    for i, name in enumerate(losses):
        if name != "loss":
            metrics[name] = {
                "train": train_losses[:, i].copy(),
                "inference": inference_losses[:, i].copy(),
            }
    wanted = set(layers) if layers is not None else None

    def by_layer(field: str) -> dict[str, np.ndarray]:
        if field not in fields:
            return {p: nan.copy() for p in paths if wanted is None or p in wanted}
        j = fields.index(field)
        return {
            p: per_layer[:, i, j].copy()
            for i, p in enumerate(paths)
            if wanted is None or p in wanted
        }

    return GapSeries(
        steps=np.asarray(steps, dtype=np.int64),
        train_loss=column(losses, train_losses, "loss"),
        inference_loss=column(losses, inference_losses, "loss"),
        metrics=metrics,
        compound=by_layer(metadata.GAP_COMPOUND),
        local=by_layer(metadata.GAP_LOCAL),
        local_derived=by_layer(metadata.GAP_LOCAL_DERIVED),
        attribution=by_layer(metadata.GAP_ATTRIBUTION),
    )


# -- ema_error payload: decoding -------------------------------------------------------


def ema_error_record_width(content: Mapping[str, Any]) -> int:
    """Values in one ``ema_error`` record: one per field its metadata ``content`` names."""
    return len(content.get("fields", ()))


def decode_ema_error(
    content: Mapping[str, Any], steps: np.ndarray, table: np.ndarray
) -> EmaErrorSeries:
    """The ``EmaErrorSeries`` of ``ema_error`` records: (E,) ``steps``, (E, fields) ``table``.

    Columns are matched to ``EmaError.FIELDS`` by the names in ``content["fields"]``;
    a field it does not name is NaN. Raises ``ValueError`` when ``table`` does not fit.
    """
    fields = list(content.get("fields", ()))
    table = np.asarray(table, dtype=np.float64)
    if table.shape != (len(steps), len(fields)):
        raise ValueError(
            f"ema_error records of shape {table.shape}, layout expects {(len(steps), len(fields))}"
        )
    return EmaErrorSeries(
        steps=np.asarray(steps, dtype=np.int64),
        values={
            field: table[:, fields.index(field)].copy()
            if field in fields
            else np.full(len(steps), np.nan)
            for field in EmaError.FIELDS
        },
    )
