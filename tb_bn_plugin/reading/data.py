"""Reading BN Internals data back through TensorBoard's data provider API.

The same functions serve the plugin (``context.data_provider``, which may be
the Rust data server) and notebooks/tests/CLI (``open_logdir``, TensorBoard's
own event-file loading with every sample kept). Nothing here parses event
records by hand.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Optional

import numpy as np
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.compat.proto import summary_pb2, types_pb2
from tensorboard.data import provider as tb_provider
from tensorboard.util import tensor_util

from tb_bn_plugin import metadata, records
from tb_bn_plugin.series import GapSeries, LayerConfig, LayerSeries, ReplicaSeries, RunData

logger = logging.getLogger("tb_bn_plugin")

# "Every sample" for read_tensors: the providers downsample only above this.
ALL_SAMPLES = sys.maxsize // 2

StatSeries = tuple[np.ndarray, np.ndarray]

# TensorProto dtypes decoded straight from ``tensor_content`` (native byte order, as ``make_ndarray`` does).
_PACKED_DTYPES = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
}


@dataclasses.dataclass
class Source:
    """A data provider plus the request context and experiment it is read with."""

    provider: tb_provider.DataProvider
    ctx: Any
    experiment_id: str


def open_logdir(logdir: str) -> Source:
    """Load ``logdir`` with TensorBoard's event multiplexer, keeping every BN Internals sample."""
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"log directory {logdir!r} does not exist")
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0},
    )
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    return Source(
        MultiplexerProvider(multiplexer, logdir), tb_context.RequestContext(), experiment_id=""
    )


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Indices of at most ``k`` of ``n`` items, evenly spaced, always keeping the first and the last.

    All ``n`` when ``k >= n``; only the last when ``k == 1``.
    """
    if k >= n:
        return np.arange(n)
    if k <= 1:
        return np.arange(n - k, n)
    return np.round(np.linspace(0, n - 1, k)).astype(np.int64)


class MultiplexerProvider(tb_data_provider.MultiplexerDataProvider):
    """TensorBoard's multiplexer-backed provider, with tensor listing and reading that scale to long runs.

    * ``list_tensors`` takes a series' latest step from its last event
      (TensorBoard's scans every event of every series for the maximum: most
      of an overview's time on a long run). The multiplexer keeps a series in
      the order it was written, dropping steps orphaned by a restart, so the
      last event holds the latest step.
    * ``read_tensors`` decodes only what it returns: its sample is
      ``evenly_spaced`` over the series (TensorBoard's decodes every event,
      then samples at random, keeping the last), decoded by ``decode_tensor``.
    """

    def __init__(self, multiplexer: plugin_event_multiplexer.EventMultiplexer, logdir: str) -> None:
        super().__init__(multiplexer, logdir)
        self._events = multiplexer

    def list_tensors(self, ctx=None, *, experiment_id, plugin_name, run_tag_filter=None):
        result: dict[str, dict[str, tb_provider.TensorTimeSeries]] = {}
        for run, tag in self._tensor_series(plugin_name, run_tag_filter):
            events = self._events.Tensors(run, tag)
            summary_metadata = self._events.SummaryMetadata(run, tag)
            result.setdefault(run, {})[tag] = tb_provider.TensorTimeSeries(
                max_step=events[-1].step if events else None,
                max_wall_time=events[-1].wall_time if events else None,
                plugin_content=summary_metadata.plugin_data.content,
                description=summary_metadata.summary_description,
                display_name=summary_metadata.display_name,
            )
        return result

    def read_tensors(
        self, ctx=None, *, experiment_id, plugin_name, downsample=None, run_tag_filter=None
    ):
        result: dict[str, dict[str, list[tb_provider.TensorDatum]]] = {}
        for run, tag in self._tensor_series(plugin_name, run_tag_filter):
            events = self._events.Tensors(run, tag)
            result.setdefault(run, {})[tag] = [
                tb_provider.TensorDatum(
                    step=events[i].step,
                    wall_time=events[i].wall_time,
                    numpy=decode_tensor(events[i].tensor_proto),
                )
                for i in evenly_spaced(len(events), downsample)
            ]
        return result

    def _tensor_series(
        self, plugin_name: str, run_tag_filter: Optional[tb_provider.RunTagFilter]
    ) -> Iterable[tuple[str, str]]:
        """(run, tag) of the plugin's tensor series that pass the filter."""
        runs = run_tag_filter.runs if run_tag_filter is not None else None
        tags = run_tag_filter.tags if run_tag_filter is not None else None
        for run, by_tag in self._events.AllSummaryMetadata().items():
            if runs is not None and run not in runs:
                continue
            for tag, summary_metadata in by_tag.items():
                if (
                    (tags is None or tag in tags)
                    and summary_metadata.plugin_data.plugin_name == plugin_name
                    and summary_metadata.data_class == summary_pb2.DATA_CLASS_TENSOR
                ):
                    yield run, tag


def decode_tensor(proto: Any) -> np.ndarray:
    """A ``TensorProto`` as a read-only numpy array.

    Packed numeric tensors (what ``tf.summary.write`` stores) are viewed
    straight from their bytes: TensorBoard's ``make_ndarray`` spends most of
    its ~20 µs per tensor on generic shape handling, which dominates reading
    thousands of small records. Anything else goes through ``make_ndarray``.
    """
    dtype = _PACKED_DTYPES.get(proto.dtype)
    if dtype is None or not proto.tensor_content:
        return tensor_util.make_ndarray(proto)
    values = np.frombuffer(proto.tensor_content, dtype=dtype)
    shape = [dim.size for dim in proto.tensor_shape.dim]
    return values.reshape(shape) if len(shape) != 1 else values


def plugin_provider(
    data_provider: tb_provider.DataProvider, multiplexer: Any, logdir: str
) -> tb_provider.DataProvider:
    """What the plugin reads with: TensorBoard's provider, or over the Python loader a ``MultiplexerProvider``."""
    if multiplexer is not None and isinstance(
        data_provider, tb_data_provider.MultiplexerDataProvider
    ):
        return MultiplexerProvider(multiplexer, logdir)
    return data_provider


@dataclasses.dataclass
class TagInfo:
    """A BN Internals tag and its decoded metadata content."""

    tag: str
    content: dict[str, Any]
    max_step: Optional[int] = None

    @property
    def kind(self) -> str:
        return self.content["kind"]

    @property
    def layer(self) -> Optional[LayerConfig]:
        layer = self.content.get("layer")
        return LayerConfig.from_json(layer) if isinstance(layer, dict) else None


def list_tags(
    source: Source, runs: Optional[Iterable[str]] = None, tags: Optional[Iterable[str]] = None
) -> tuple[dict[str, list[TagInfo]], dict[str, list[str]]]:
    """BN Internals tags (all, or only ``tags``) per run, and per-run errors for tags whose metadata cannot be read."""
    listing = source.provider.list_tensors(
        source.ctx,
        experiment_id=source.experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(runs=runs, tags=tags),
    )
    found: dict[str, list[TagInfo]] = {}
    errors: dict[str, list[str]] = {}
    for run, by_tag in listing.items():
        for tag, series in sorted(by_tag.items()):
            try:
                content = metadata.parse_plugin_content(series.plugin_content)
            except metadata.MetadataError as err:
                errors.setdefault(run, []).append(f"tag {tag!r}: {err}")
                continue
            found.setdefault(run, []).append(TagInfo(tag, content, series.max_step))
    return found, errors


def read_tensors(
    source: Source, run_tags: Mapping[str, Iterable[str]], downsample: int = ALL_SAMPLES
) -> dict[str, dict[str, list[tb_provider.TensorDatum]]]:
    """The tensor events of the given tags, per run, in step order."""
    runs = [r for r, t in run_tags.items() if t]
    if not runs:
        return {}
    tags = {t for r in runs for t in run_tags[r]}
    data = source.provider.read_tensors(
        source.ctx,
        experiment_id=source.experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        downsample=downsample,
        run_tag_filter=tb_provider.RunTagFilter(runs=runs, tags=tags),
    )
    return {
        run: {
            tag: sorted(data.get(run, {}).get(tag, []), key=lambda d: d.step)
            for tag in run_tags[run]
        }
        for run in runs
    }


def layer_series(
    summary_tag: TagInfo,
    summary_data: list[tb_provider.TensorDatum],
    channels_tag: Optional[TagInfo] = None,
    channels_data: Optional[list[tb_provider.TensorDatum]] = None,
    replicas_tag: Optional[TagInfo] = None,
    replicas_data: Optional[list[tb_provider.TensorDatum]] = None,
) -> LayerSeries:
    """Assemble one layer's series from its summary (and optional channel and per-replica) events.

    Raises ``ValueError`` when an event's length does not match the layout.
    """
    config = summary_tag.layer
    c = config.channels
    summary_data = _dedupe_steps(summary_data)
    info, summary = records.split_summary_record(
        config, _stack(summary_data, records.summary_record_width(config))
    )
    rows = (
        list(channels_tag.content.get("rows", config.stats())) if channels_tag is not None else []
    )
    channels_data = _dedupe_steps(channels_data or []) if rows else []
    snapshots = _stack(channels_data, len(rows) * c).reshape(len(channels_data), len(rows), c)
    return LayerSeries(
        config=config,
        steps=np.asarray([d.step for d in summary_data], dtype=np.int64),
        info=_restore_momentum(info, config),
        summary=summary,
        channel_steps=np.asarray([d.step for d in channels_data], dtype=np.int64),
        channels={
            s: snapshots[:, rows.index(s)] if s in rows else np.empty((0, c))
            for s in config.stats()
        },
        replicas=replica_series(replicas_tag, replicas_data or [])
        if replicas_tag is not None
        else None,
    )


def replica_series(tag: TagInfo, data: list[tb_provider.TensorDatum]) -> ReplicaSeries:
    """Assemble a layer's ``ReplicaSeries`` from its ``layer_replicas`` events (layout in ``metadata``)."""
    c, r = tag.layer.channels, int(tag.content["replicas"])
    data = _dedupe_steps(data)
    rows = _stack(data, r * (1 + 2 * c)).reshape(len(data), r, 1 + 2 * c)
    count, mean, variance = records.split_replica_record(rows, c)
    return ReplicaSeries(np.asarray([d.step for d in data], dtype=np.int64), count, mean, variance)


def _stack(data: list[tb_provider.TensorDatum], width: int) -> np.ndarray:
    """(len(data), width) float64 rows of the events' flattened tensors."""
    rows = [np.asarray(d.numpy).ravel() for d in data]
    for datum, row in zip(data, rows):
        if row.size != width:
            raise ValueError(
                f"event at step {datum.step} holds {row.size} values, layout expects {width}"
            )
    return (
        np.concatenate(rows).astype(np.float64).reshape(len(rows), width)
        if rows
        else np.empty((0, width))
    )


def gap_series(
    tag: TagInfo, data: list[tb_provider.TensorDatum], layers: Optional[Iterable[str]] = None
) -> GapSeries:
    """Assemble a run's ``GapSeries`` from its gap events (layout in ``metadata``).

    ``train_loss``/``inference_loss`` are the ``loss`` entry; further losses
    (per output of multi-output models) join ``metrics`` under their names.
    Raises ``ValueError`` when an event's length does not match the layout.
    """
    content = tag.content
    losses = list(content.get("losses", []))
    metric_names = list(content.get("metrics", []))
    paths = list(content.get("layers", []))
    fields = list(content.get("layer_fields", metadata.GAP_LAYER_FIELDS))
    n_loss, n_metric = len(losses), len(metric_names)
    expected = 2 * n_loss + 2 * n_metric + len(paths) * len(fields)
    data = _dedupe_steps(data)
    steps = [d.step for d in data]
    table = _stack(data, expected)
    train_losses, table = table[:, :n_loss], table[:, n_loss:]
    inference_losses, table = table[:, :n_loss], table[:, n_loss:]
    train_metrics, table = table[:, :n_metric], table[:, n_metric:]
    inference_metrics, table = table[:, :n_metric], table[:, n_metric:]
    per_layer = table.reshape(len(steps), len(paths), len(fields))
    nan = np.full(len(steps), np.nan)

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


def load_runs(
    source: Source,
    runs: Optional[Iterable[str]] = None,
    layers: Optional[Iterable[str]] = None,
    with_channels: bool = True,
    downsample: int = ALL_SAMPLES,
    cache: Optional[SeriesCache] = None,
    channel_downsample: Optional[int | Callable[[LayerConfig], int]] = None,
    with_gap: bool = True,
) -> dict[str, RunData]:
    """Every (or the selected) run's layer series and train/inference gap.

    Args:
      runs / layers: restrict to these run names / layer paths.
      with_channels: also read per-channel snapshots (the bulk of the data).
      downsample: at most this many events per tag (the provider keeps the
        last; see ``MultiplexerProvider`` for how each loader samples).
      cache: reuse layer series parsed before from the same tags at the same max_step.
      channel_downsample: at most this many per-channel snapshots per layer,
        or a function of the layer's config giving it (default: ``downsample``).
      with_gap: also read the train/inference gap.
    """
    if channel_downsample is None:
        channel_downsample = downsample
    snapshots_of = (
        channel_downsample if callable(channel_downsample) else (lambda _: channel_downsample)
    )
    wanted_layers = set(layers) if layers is not None else None
    tag_filter = None
    if wanted_layers is not None:
        kinds = ("summary", "channels", "replicas", "ema_error")
        tag_filter = [metadata.layer_tag(p, k) for p in wanted_layers for k in kinds]
        if with_gap:
            tag_filter.append(metadata.gap_tag())
    tags, errors = list_tags(source, runs, tag_filter)
    by_run: dict[str, dict[str, dict[str, TagInfo]]] = {}
    gap_tags: dict[str, TagInfo] = {}
    ema_tags: dict[str, dict[str, TagInfo]] = {}
    for run, infos in tags.items():
        for info in infos:
            if info.kind == metadata.KIND_GAP:
                if with_gap:
                    gap_tags[run] = info
                continue
            if info.kind == metadata.KIND_EMA_ERROR:
                ema_tags.setdefault(run, {})[str(info.content.get("layer_path"))] = info
                continue
            layer = info.layer
            if layer is None or (wanted_layers is not None and layer.path not in wanted_layers):
                continue
            if (
                info.kind in (metadata.KIND_LAYER_CHANNELS, metadata.KIND_LAYER_REPLICAS)
                and not with_channels
            ):
                continue
            if info.kind in (
                metadata.KIND_LAYER_SUMMARY,
                metadata.KIND_LAYER_CHANNELS,
                metadata.KIND_LAYER_REPLICAS,
            ):
                by_run.setdefault(run, {}).setdefault(layer.path, {})[info.kind] = info
    sampling = {
        (run, path): (downsample, snapshots_of(by_kind[metadata.KIND_LAYER_SUMMARY].layer))
        for run, layers_ in by_run.items()
        for path, by_kind in layers_.items()
        if metadata.KIND_LAYER_SUMMARY in by_kind
    }
    cached = {
        key: hit
        for key, by_kind in ((k, by_run[k[0]][k[1]]) for k in sampling)
        if cache is not None
        and (hit := cache.get(_cache_key(key[0], by_kind, sampling[key]))) is not None
    }
    reads: dict[int, dict[str, list[str]]] = {}  # downsample -> run -> tags, one provider call each

    def want(run: str, tag: str, sample: int) -> None:
        reads.setdefault(sample, {}).setdefault(run, []).append(tag)

    for run, layers_ in by_run.items():
        for path, by_kind in layers_.items():
            if (run, path) in cached:
                continue
            for kind, info in by_kind.items():
                channels = kind == metadata.KIND_LAYER_CHANNELS and (run, path) in sampling
                want(run, info.tag, sampling[run, path][1] if channels else downsample)
    for run, info in gap_tags.items():
        want(run, info.tag, downsample)
    for run, by_path in ema_tags.items():
        for info in by_path.values():
            want(run, info.tag, downsample)
    data: dict[str, dict[str, list[tb_provider.TensorDatum]]] = {}
    for sample, run_tags in reads.items():
        for run, by_tag in read_tensors(source, run_tags, sample).items():
            data.setdefault(run, {}).update(by_tag)
    result: dict[str, RunData] = {}
    for run in sorted(set(by_run) | set(gap_tags) | set(errors)):
        run_data = RunData(run=run, layers={}, errors=list(errors.get(run, [])))
        for path, info in ema_tags.get(run, {}).items():
            events = _dedupe_steps(data[run][info.tag])
            fields = len(info.content.get("fields", ()))
            values = np.asarray([np.asarray(d.numpy, dtype=np.float64).ravel() for d in events])
            if values.ndim != 2 or values.shape[1] != fields:
                run_data.errors.append(f"ema_error of layer {path!r}: unexpected layout")
                continue
            run_data.ema_error[path] = (
                np.asarray([d.step for d in events], dtype=np.int64),
                values,
            )
        if run in gap_tags:
            try:
                run_data.gap = gap_series(
                    gap_tags[run], data[run][gap_tags[run].tag], wanted_layers
                )
            except (ValueError, KeyError, TypeError) as err:
                run_data.errors.append(f"gap: unreadable data ({err})")
        for path, by_kind in by_run.get(run, {}).items():
            if (run, path) in cached:
                run_data.layers[path] = cached[run, path]
                continue
            summary = by_kind.get(metadata.KIND_LAYER_SUMMARY)
            if summary is None:
                run_data.errors.append(
                    f"layer {path!r} has per-channel data but no summary records"
                )
                continue
            channels = by_kind.get(metadata.KIND_LAYER_CHANNELS)
            replicas = by_kind.get(metadata.KIND_LAYER_REPLICAS)
            try:
                run_data.layers[path] = layer_series(
                    summary,
                    data[run][summary.tag],
                    channels,
                    data[run].get(channels.tag) if channels else None,
                    replicas,
                    data[run].get(replicas.tag) if replicas else None,
                )
            except (ValueError, KeyError, TypeError) as err:
                run_data.errors.append(f"layer {path!r}: unreadable data ({err})")
                continue
            if cache is not None:
                cache.put(_cache_key(run, by_kind, sampling[run, path]), run_data.layers[path])
        result[run] = run_data
    return result


class SeriesCache:
    """A thread-safe LRU of parsed ``LayerSeries``, bounded by their array bytes.

    ``load_runs`` keys entries by run, the layer's tags with their max_step and
    the downsampling, so data that changed on a reload is never served from it.
    Cached series are shared: callers must not modify them.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[Hashable, tuple[LayerSeries, int]] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[LayerSeries]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, series: LayerSeries) -> None:
        arrays = [
            series.steps,
            series.channel_steps,
            *series.info.values(),
            *series.summary.values(),
            *series.channels.values(),
        ]
        if series.replicas is not None:
            arrays += [series.replicas.count, series.replicas.mean, series.replicas.variance]
        size = sum(a.nbytes for a in arrays)
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            self._entries[key] = (series, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                self._bytes -= self._entries.popitem(last=False)[1][1]


def _cache_key(run: str, by_kind: Mapping[str, TagInfo], sampling: tuple[int, int]) -> Hashable:
    return run, sampling, tuple(sorted((i.tag, i.max_step) for i in by_kind.values()))


def read_stats(logdir: str) -> dict[str, dict[str, dict[str, StatSeries]]]:
    """Per-channel statistics of every run and layer under ``logdir``.

    Returns ``{run: {layer_path: {stat: (steps, values)}}}`` with stats among
    ``batch_mean``, ``batch_variance``, ``moving_mean``, ``moving_variance``,
    ``gamma``, ``beta`` (gamma/beta only where the layer has them); ``steps`` is
    a 1-D int array of every step with a per-channel snapshot and ``values`` a
    (steps, channels) float array. Batch statistics are NaN at steps where the
    layer did not normalise with batch statistics. Reads through TensorBoard's
    event-file loading and keeps every logged step.
    """
    runs = load_runs(open_logdir(logdir))
    return {
        run: {
            path: {
                stat: (series.channel_steps.copy(), values)
                for stat, values in series.channels.items()
            }
            for path, series in run_data.layers.items()
        }
        for run, run_data in runs.items()
        if run_data.layers
    }


def read_gap(logdir: str) -> dict[str, GapSeries]:
    """The train/inference gap logged under ``logdir``: ``{run: GapSeries}`` for runs that have one.

    Every measurement is kept (steps in order); see ``series.GapSeries``.
    """
    runs = load_runs(open_logdir(logdir), with_channels=False)
    return {run: run_data.gap for run, run_data in runs.items() if run_data.gap is not None}


def _restore_momentum(info: dict[str, np.ndarray], config: LayerConfig) -> dict[str, np.ndarray]:
    """Records store momentum in float32; where it equals the layer's configured momentum, use that exactly."""
    momentum = info["momentum"]
    info["momentum"] = np.where(momentum == np.float32(config.momentum), config.momentum, momentum)
    return info


def _dedupe_steps(data: list[tb_provider.TensorDatum]) -> list[tb_provider.TensorDatum]:
    """Keep the last event per step (a resumed run may re-log a step)."""
    by_step = {d.step: d for d in data}
    return [by_step[s] for s in sorted(by_step)]
