"""Where BN Internals data is read from: a TensorBoard data provider, as one request sees it.

Owns ``ExperimentSource`` (a provider with the request context and experiment
it is read with), ``open_logdir`` (TensorBoard's own event-file loading of a
logdir with every sample kept, for notebooks, tests and the CLI),
``plugin_provider`` (what the plugin reads with inside TensorBoard, which may
be the Rust data server), ``MultiplexerProvider`` (TensorBoard's
multiplexer-backed provider, made to scale to long runs), ``TensorEvents`` (one
tag's events, columnar), ``decode_tensor``, ``read_tensors`` and
``reads_in_process``. Nothing here parses event records by hand or knows a
payload's layout.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import (
    plugin_event_accumulator,
    plugin_event_multiplexer,
)
from tensorboard.compat.proto import summary_pb2, tensor_pb2, types_pb2
from tensorboard.data import grpc_provider
from tensorboard.data import provider as tb_provider
from tensorboard.data.proto import data_provider_pb2
from tensorboard.util import tensor_util

from tb_bn_plugin import metadata

# "Every sample" for read_tensors: the providers downsample only above this.
ALL_SAMPLES = sys.maxsize // 2

# TensorProto dtypes decoded straight from ``tensor_content`` (native byte order, as
# ``make_ndarray`` does).
_PACKED_DTYPES = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
}


@dataclasses.dataclass
class ExperimentSource:
    """An experiment's data: the provider holding it, the request context and experiment id."""

    provider: tb_provider.DataProvider
    ctx: Any
    experiment_id: str


def open_logdir(logdir: str) -> ExperimentSource:
    """Load ``logdir`` with TensorBoard's event multiplexer, keeping every BN Internals sample."""
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"log directory {logdir!r} does not exist")
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0},
    )
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    return ExperimentSource(
        MultiplexerProvider(multiplexer, logdir), tb_context.RequestContext(), experiment_id=""
    )


def plugin_provider(
    data_provider: tb_provider.DataProvider, multiplexer: Any, logdir: str
) -> tb_provider.DataProvider:
    """What the plugin reads with: TensorBoard's provider or, over its multiplexer or the Rust
    data server, ours.
    """
    if multiplexer is not None and isinstance(
        data_provider, tb_data_provider.MultiplexerDataProvider
    ):
        return MultiplexerProvider(multiplexer, logdir)
    if type(data_provider) is grpc_provider.GrpcDataProvider:
        # TensorBoard's provider holds the stub to the data server it started; no public getter.
        return GrpcProvider(data_provider._addr, data_provider._stub)
    return data_provider


def reads_in_process(provider: tb_provider.DataProvider) -> bool:
    """Whether reading ``provider`` is Python work in this process (TensorBoard's multiplexer,
    ours included) rather than waiting on another process (the Rust data server)."""
    return isinstance(provider, tb_data_provider.MultiplexerDataProvider)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Indices of at most ``k`` of ``n`` items, evenly spaced, keeping the first and the last.

    All ``n`` when ``k >= n``; only the last when ``k == 1``.
    """
    if k >= n:
        return np.arange(n)
    if k <= 1:
        return np.arange(n - k, n)
    return np.round(np.linspace(0, n - 1, k)).astype(np.int64)


class MultiplexerProvider(tb_data_provider.MultiplexerDataProvider):
    """TensorBoard's multiplexer-backed provider, listing and reading tensors fast on long runs.

    * ``list_tensors`` takes a series' latest step from its last event
      (TensorBoard's scans every event of every series for the maximum: most
      of an overview's time on a long run). The multiplexer keeps a series in
      the order it was written, dropping steps orphaned by a restart, so the
      last event holds the latest step.
    * ``read_tensor_events`` decodes only what it returns, when it is used
      (``TensorEvents``): its sample is ``evenly_spaced`` over the series
      (TensorBoard's ``read_tensors`` decodes every event, then samples at random,
      keeping the last).
    """

    def __init__(self, multiplexer: plugin_event_multiplexer.EventMultiplexer, logdir: str) -> None:
        super().__init__(multiplexer, logdir)
        self._events = multiplexer

    def list_tensors(self, ctx=None, *, experiment_id, plugin_name, run_tag_filter=None):
        result: dict[str, dict[str, tb_provider.TensorTimeSeries]] = {}
        for run, tag in self._tensor_series(plugin_name, run_tag_filter):
            events = self._series(run, tag)
            summary_metadata = self._events.SummaryMetadata(run, tag)
            result.setdefault(run, {})[tag] = tb_provider.TensorTimeSeries(
                max_step=events[-1].step if events else None,
                max_wall_time=events[-1].wall_time if events else None,
                plugin_content=summary_metadata.plugin_data.content,
                description=summary_metadata.summary_description,
                display_name=summary_metadata.display_name,
            )
        return result

    def read_tensor_events(
        self, ctx=None, *, experiment_id, plugin_name, downsample, run_tag_filter=None
    ) -> dict[str, dict[str, TensorEvents]]:
        """``read_tensors`` as ``TensorEvents``: ``evenly_spaced`` over each series, undecoded."""
        result: dict[str, dict[str, TensorEvents]] = {}
        for run, tag in self._tensor_series(plugin_name, run_tag_filter):
            events = self._series(run, tag)
            picked = [events[i] for i in evenly_spaced(len(events), downsample)]
            result.setdefault(run, {})[tag] = TensorEvents(
                [e.step for e in picked], [e.tensor_proto for e in picked]
            )
        return result

    def _series(self, run: str, tag: str) -> Sequence[Any]:
        """A tensor series' events in the order kept, not copied.

        ``Tensors(run, tag)`` copies the series into a new list, touching every
        event (a reference count each): at 5,000 events per tag in a heap of
        gigabytes that costs ~0.5 ms per tag, seconds per overview. The
        accumulator's own list is read in place instead: TensorBoard only
        appends to it, replaces an item, or swaps in a filtered new list, and
        an index read sees a whole event either way. ``Tensors`` where
        TensorBoard keeps the list elsewhere.
        """
        try:
            reservoir = self._events.GetAccumulator(run).tensors_by_tag[tag]
            return reservoir._buckets[plugin_event_accumulator._TENSOR_RESERVOIR_KEY].items
        except (AttributeError, KeyError):
            return self._events.Tensors(run, tag)

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


class GrpcProvider(grpc_provider.GrpcDataProvider):
    """TensorBoard's provider over the Rust data server, reading tensors as ``TensorEvents``.

    TensorBoard's ``read_tensors`` decodes every tensor with ``make_ndarray``
    (~35 µs each) into a ``TensorDatum`` per event: most of an overview's time
    over thousands of series. ``read_tensor_events`` keeps each tag's answer
    as it came, decoded when used.
    """

    def read_tensor_events(
        self, ctx=None, *, experiment_id, plugin_name, downsample, run_tag_filter=None
    ) -> dict[str, dict[str, TensorEvents]]:
        request = data_provider_pb2.ReadTensorsRequest(experiment_id=experiment_id)
        request.plugin_filter.plugin_name = plugin_name
        grpc_provider._populate_rtf(run_tag_filter, request.run_tag_filter)
        request.downsample.num_points = downsample
        with grpc_provider._translate_grpc_error():
            response = self._stub.ReadTensors(request)
        return {
            run.run_name: {
                tag.tag_name: TensorEvents(tag.data.step, tag.data.value) for tag in run.tags
            }
            for run in response.runs
        }


class TensorEvents:
    """One tag's events, columnar: ``steps`` ((N,) int64) and their tensors, decoded when used.

    What ``read_tensors`` answers, one object per tag rather than a
    ``TensorDatum`` per event (creating 100,000 of those was a fifth of a cold
    overview). Tensors are ``TensorProto``s (decoded by ``tensor`` and ``rows``)
    or, from another provider's ``TensorDatum``s, arrays.
    """

    __slots__ = ("steps", "_tensors")

    def __init__(self, steps: Iterable[int], tensors: Iterable[Any]) -> None:
        self.steps = np.fromiter(steps, dtype=np.int64)
        self._tensors = list(tensors)
        if len(self._tensors) != len(self.steps):
            raise ValueError(f"{len(self.steps)} steps for {len(self._tensors)} tensors")

    @classmethod
    def of(cls, data: TensorEvents | Iterable[tb_provider.TensorDatum]) -> TensorEvents:
        """``data`` as ``TensorEvents`` (``TensorDatum``s as any data provider returns them)."""
        if isinstance(data, TensorEvents):
            return data
        data = list(data)
        return cls((d.step for d in data), (d.numpy for d in data))

    def __len__(self) -> int:
        return len(self._tensors)

    def tensor(self, i: int) -> np.ndarray:
        """The ``i``-th event's tensor as an array."""
        item = self._tensors[i]
        return decode_tensor(item) if isinstance(item, tensor_pb2.TensorProto) else np.asarray(item)

    def select(self, indices: Sequence[int] | np.ndarray) -> TensorEvents:
        """The events at ``indices``, in that order."""
        return TensorEvents(self.steps[indices], [self._tensors[i] for i in indices])

    def in_step_order(self) -> TensorEvents:
        """The events sorted by step (a stable sort: equal steps keep their order)."""
        if np.all(self.steps[1:] >= self.steps[:-1]):
            return self
        return self.select(np.argsort(self.steps, kind="stable"))

    def last_per_step(self) -> TensorEvents:
        """The last event of each step (a resumed run may log a step again), in step order."""
        ordered = self.in_step_order()
        steps = ordered.steps
        if np.all(steps[1:] != steps[:-1]):
            return ordered
        last = np.flatnonzero(np.append(steps[1:] != steps[:-1], True))
        return ordered.select(last)

    def rows(self, width: int) -> np.ndarray:
        """(N, width) float64 rows of the tensors; ``ValueError`` naming an event of another
        size.

        Packed tensors of one dtype (what the writers log) are read from their
        joined bytes in one ``np.frombuffer``, not one array per event.
        """
        packed = self._packed(width)
        if packed is not None:
            return packed.astype(np.float64)
        rows = [self.tensor(i).ravel() for i in range(len(self))]
        for step, row in zip(self.steps, rows):
            if row.size != width:
                raise ValueError(
                    f"event at step {step} holds {row.size} values, layout expects {width}"
                )
        return (
            np.concatenate(rows).astype(np.float64).reshape(len(rows), width)
            if rows
            else np.empty((0, width))
        )

    def _packed(self, width: int) -> Optional[np.ndarray]:
        """The tensors from their joined bytes when all are packed ``TensorProto``s of one
        dtype holding ``width`` values each; else ``None``."""
        tensors = self._tensors
        if not tensors or not all(isinstance(t, tensor_pb2.TensorProto) for t in tensors):
            return None
        dtypes = set(map(operator.attrgetter("dtype"), tensors))
        dtype = _PACKED_DTYPES.get(dtypes.pop()) if len(dtypes) == 1 else None
        if dtype is None:
            return None
        contents = list(map(operator.attrgetter("tensor_content"), tensors))
        if set(map(len, contents)) != {width * dtype.itemsize}:
            return None
        return np.frombuffer(b"".join(contents), dtype=dtype).reshape(len(tensors), width)


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


def read_tensors(
    source: ExperimentSource, run_tags: Mapping[str, Iterable[str]], downsample: int = ALL_SAMPLES
) -> dict[str, dict[str, TensorEvents]]:
    """The tensor events of the given tags, per run, in step order (one provider call).

    Through the provider's ``read_tensor_events`` where it has one (ours), else
    its ``read_tensors``.
    """
    runs = [r for r, t in run_tags.items() if t]
    if not runs:
        return {}
    tags = {t for r in runs for t in run_tags[r]}
    read = getattr(source.provider, "read_tensor_events", None)
    if read is None:
        read = source.provider.read_tensors
    data = read(
        source.ctx,
        experiment_id=source.experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        downsample=downsample,
        run_tag_filter=tb_provider.RunTagFilter(runs=runs, tags=tags),
    )
    return {
        run: {
            tag: TensorEvents.of(data.get(run, {}).get(tag, [])).in_step_order()
            for tag in run_tags[run]
        }
        for run in runs
    }
