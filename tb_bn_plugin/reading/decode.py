"""Tensor events of one tag -> ``series`` dataclasses.

Owns the reader's side of decoding: keeping the last event per step
(``dedupe_steps``), taking the events' rows checked against the layout's width
(``TensorEvents.rows``), and handing them to the layout code in ``records``
(``split_summary_record``, ``split_replica_record``, ``decode_gap``,
``decode_ema_error``, ``decode_step_functions``). Every function raises
``ValueError`` (or ``KeyError``/``TypeError`` on malformed metadata) for data
that does not fit its layout; ``load`` turns that into a per-run error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional, Union

import numpy as np
from tensorboard.data import provider as tb_provider

from tb_bn_plugin import records
from tb_bn_plugin.reading.provider import TensorEvents
from tb_bn_plugin.reading.tags import TagInfo
from tb_bn_plugin.series import (
    CallSeries,
    EmaErrorSeries,
    GapSeries,
    LayerConfig,
    LayerSeries,
    MomentGroups,
    ReplicaSeries,
    StepFunctions,
)

# A tag's events: as ``read_tensors`` answers them, or any data provider's ``TensorDatum``s.
Events = Union[TensorEvents, Iterable[tb_provider.TensorDatum]]


def layer_series(
    summary_tag: TagInfo,
    summary_data: Events,
    channels_tag: Optional[TagInfo] = None,
    channels_data: Optional[Events] = None,
    replicas_tag: Optional[TagInfo] = None,
    replicas_data: Optional[Events] = None,
    calls_tag: Optional[TagInfo] = None,
    calls_data: Optional[Events] = None,
) -> LayerSeries:
    """One layer's series from its summary (and optional channel, per-replica and per-call)
    events."""
    config = summary_tag.layer
    c = config.channels
    summary_data = dedupe_steps(summary_data)
    info, summary = records.split_summary_record(
        config, summary_data.rows(records.summary_record_width(config))
    )
    rows = (
        list(channels_tag.content.get("rows", config.stats())) if channels_tag is not None else []
    )
    channels_data = dedupe_steps(channels_data if rows and channels_data is not None else [])
    snapshots = channels_data.rows(len(rows) * c).reshape(len(channels_data), len(rows), c)
    return LayerSeries(
        config=config,
        steps=summary_data.steps,
        info=_restore_momentum(info, config),
        summary=summary,
        channel_steps=channels_data.steps,
        channels={
            s: snapshots[:, rows.index(s)] if s in rows else np.empty((0, c))
            for s in config.stats()
        },
        replicas=moment_groups(ReplicaSeries, replicas_tag, "replicas", replicas_data)
        if replicas_tag is not None
        else None,
        calls=moment_groups(CallSeries, calls_tag, "calls", calls_data)
        if calls_tag is not None
        else None,
    )


def moment_groups(
    kind: type[MomentGroups], tag: TagInfo, groups_key: str, data: Optional[Events]
) -> MomentGroups:
    """A ``ReplicaSeries`` or ``CallSeries`` from ``layer_replicas`` or ``layer_calls`` events
    (one layout, in ``metadata``); ``groups_key``: the content field with the row count."""
    c, g = tag.layer.channels, int(tag.content[groups_key])
    data = dedupe_steps(data if data is not None else [])
    rows = data.rows(g * (1 + 2 * c)).reshape(len(data), g, 1 + 2 * c)
    count, mean, variance = records.split_replica_record(rows, c)
    return kind(data.steps, count, mean, variance)


def gap_series(tag: TagInfo, data: Events, layers: Optional[Iterable[str]] = None) -> GapSeries:
    """A run's ``GapSeries`` from its ``gap`` events, of ``layers`` only if given."""
    data = dedupe_steps(data)
    table = data.rows(records.gap_record_width(tag.content))
    return records.decode_gap(tag.content, data.steps, table, layers)


def ema_error_series(tag: TagInfo, data: Events) -> EmaErrorSeries:
    """A layer's ``EmaErrorSeries`` from its ``ema_error`` events (``records.decode_ema_error``)."""
    data = dedupe_steps(data)
    table = data.rows(records.ema_error_record_width(tag.content))
    return records.decode_ema_error(tag.content, data.steps, table)


def step_functions(tag: TagInfo, data: Events) -> Optional[StepFunctions]:
    """The latest ``step_functions`` event (one per fit) as ``StepFunctions``; None without one."""
    data = dedupe_steps(data)
    if not len(data):
        return None
    return records.decode_step_functions(tag.content, int(data.steps[-1]), data.tensor(-1))


def dedupe_steps(data: Events) -> TensorEvents:
    """Keep the last event per step (a resumed run may re-log a step), in step order."""
    return TensorEvents.of(data).last_per_step()


def _restore_momentum(info: dict[str, np.ndarray], config: LayerConfig) -> dict[str, np.ndarray]:
    """Momentum is stored in float32: where it equals the layer's configured one, use that."""
    momentum = info["momentum"]
    info["momentum"] = np.where(momentum == np.float32(config.momentum), config.momentum, momentum)
    return info
