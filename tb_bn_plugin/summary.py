"""Writing BN Internals summaries: with ``tf.summary``, or without TensorFlow.

``SummaryWriter`` owns one run's event file writer and writes every tag's
``SummaryMetadata`` once, with the tag's first event in its file. Two sinks
write the same events: ``tf.summary`` (TensorFlow models: logged steps are
written in one traced call for all layers, and tf.distribute's chief-only
convention applies), and TensorBoard's own framework-independent
``EventFileWriter`` (numpy and protobuf only), for Keras on JAX or PyTorch,
where TensorFlow may not be installed. What each payload holds (tensor and
metadata content) is encoded in ``records``; the tags come from ``metadata``.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata, records
from tb_bn_plugin.records import LayerSnapshot

# A tag, its tensor at one step, and a function giving the tag's metadata content.
Item = tuple[str, np.ndarray, Callable[[], dict[str, Any]]]


class SummaryWriter:
    """Writes BN Internals tags of one run into ``logdir``.

    A logged step's records of every layer are written by one call of a
    traced function (shared by every writer), not by one eager
    ``tf.summary.write`` per tag: eager writes cost about 0.45 ms each, which
    dominated a log at 100 layers.
    """

    def __init__(
        self,
        logdir: str,
        max_queue: int = 100,
        flush_millis: int = 30_000,
        temporary: bool = False,
        tensorflow: bool = True,
    ) -> None:
        """``temporary``: ``close`` deletes ``logdir`` (a non-chief worker's; see ``for_run``).

        ``tensorflow``: write with ``tf.summary``; False: with TensorBoard's
        ``EventFileWriter``, without importing TensorFlow (same events).
        """
        self.logdir = logdir
        self.temporary = temporary
        if tensorflow:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(
                logdir, max_queue=max_queue, flush_millis=flush_millis
            )
            self._events = None
        else:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._writer = None
            self._events = EventFileWriter(
                logdir, max_queue_size=max_queue, flush_secs=flush_millis / 1000
            )
        self._written_tags: set[str] = set()
        # write_items' tensors and traced call per layout of items: (tags, no metadata,
        # concrete function).
        self._batch_calls: dict[tuple, tuple[Any, Any, Any]] = {}

    @classmethod
    def for_run(cls, run_dir: str, strategy: Any) -> SummaryWriter:
        """The writer of one run under a ``tf.distribute`` strategy, or None without TensorFlow.

        Where this process writes summaries: into ``run_dir``, checked first
        (``PermissionError`` naming it when it cannot hold event files). On a
        non-chief multi-worker worker: into a temporary directory that
        ``close`` deletes (``worker_temp_dir``). ``strategy=None`` writes
        without TensorFlow.
        """
        if strategy is None:
            _check_writable(run_dir)
            return cls(run_dir, tensorflow=False)
        worker_dir = worker_temp_dir(strategy)
        if worker_dir is not None:
            return cls(worker_dir, temporary=True)
        _check_writable(run_dir)
        return cls(run_dir)

    def layer_step(
        self, snapshots: Sequence[LayerSnapshot], step: int, full: bool, channel_dtype: np.dtype
    ) -> None:
        """Write one logged step: every layer's summary record, and per-channel snapshots
        (with per-replica and per-call statistics where captured) if ``full``."""
        self.write_items(step, layer_items(snapshots, full, channel_dtype))

    def write(self, tag: str, tensor: np.ndarray, step: int, content: dict[str, Any]) -> None:
        """Write any BN Internals payload; ``content`` describes it (needs a ``kind``)."""
        self._write(tag, tensor, step, lambda: content)

    def graph(self, graph_def: Any) -> None:
        """Write ``graph_def`` as this run's graph (Graphs tab; analysed by the plugin)."""
        if self._events is None:
            write_graph(graph_def, self._writer)
            return
        self._events.add_event(
            event_pb2().Event(wall_time=time.time(), graph_def=graph_def.SerializeToString())
        )
        self._events.flush()

    def flush(self) -> None:
        (self._writer or self._events).flush()

    def close(self) -> None:
        (self._writer or self._events).close()
        if self.temporary:
            shutil.rmtree(self.logdir, ignore_errors=True)

    def _write(
        self, tag: str, tensor: np.ndarray, step: int, content: Callable[[], dict[str, Any]]
    ) -> None:
        serialized = self._metadata(tag, content)
        if self._events is not None:
            self._events.add_event(_tensor_event(tag, tensor, step, serialized))
            return
        import tensorflow as tf

        with self._writer.as_default():
            tf.summary.write(tag=tag, tensor=tensor, step=step, metadata=serialized)

    def _metadata(self, tag: str, content: Callable[[], dict[str, Any]]) -> bytes:
        """The serialized metadata of ``tag``'s next event: the tag's own for its first
        event in this file, else empty."""
        # Metadata goes with a tag's first event in this file only: TensorBoard's
        # loaders (Python and Rust) take a time series' metadata from its first
        # event, and repeating it would multiply the bytes of small records.
        if tag in self._written_tags:
            return b""
        self._written_tags.add(tag)
        return metadata.create_summary_metadata(content()).SerializeToString()

    def write_items(self, step: int, items: Sequence[Item]) -> None:
        """Write several tags at ``step``: with ``tf.summary`` in one traced call."""
        if self._events is not None:
            for tag, tensor, content in items:
                self._write(tag, tensor, step, content)
            return
        import tensorflow as tf

        # The writer's resource goes in as an argument, not captured by the trace: one
        # traced function serves every writer (every fit of a model) with the same
        # tensor shapes, so a new fit does not retrace. It is called as the concrete
        # function for these arguments: the tensor shapes of a new model do trace anew,
        # and TensorFlow's frequent-retracing detector, which would warn about that after
        # a few models (folds, tuner trials), only watches calls of the tf.function itself.
        # The concrete function and the tags tensor are looked up once per writer and
        # layout: a log runs every few hundred milliseconds, and each lookup or constant
        # it skips is Python code that has gone cold in between (benchmarks/README.md).
        tags = tuple(tag for tag, _, _ in items)
        tensors = [tensor for _, tensor, _ in items]
        serialized = [self._metadata(tag, content) for tag, _, content in items]
        layout = (tags, tuple((tensor.shape, tensor.dtype) for tensor in tensors))
        tag_tensor, no_metadata, write = self._batch_calls.get(layout) or (
            tf.constant(tags),
            tf.constant([b""] * len(tags)),
            None,
        )
        metadata_tensor = tf.constant(serialized) if any(serialized) else no_metadata
        step_tensor = tf.constant(step, tf.int64)
        args = (self._writer._resource, step_tensor, tag_tensor, metadata_tensor, tensors)
        if write is None:
            write = _batch_writer().get_concrete_function(*args)
            self._batch_calls[layout] = (tag_tensor, no_metadata, write)
        write(*args)


@functools.cache
def _batch_writer() -> Callable[..., None]:
    """The one traced function writing a logged step's tags (built on first use: TensorFlow
    is imported only where it writes)."""
    import tensorflow as tf

    @tf.function(autograph=False)
    def write_batch(
        writer: tf.Tensor, step: tf.Tensor, tags: tf.Tensor, metadata: tf.Tensor, tensors: list
    ) -> None:
        """Write ``tensors[i]`` under ``tags[i]`` with serialized ``metadata[i]`` (empty after
        a tag's first event) at ``step`` into the summary writer resource ``writer``."""
        for i, tensor in enumerate(tensors):
            tf.raw_ops.WriteSummary(
                writer=writer, step=step, tensor=tensor, tag=tags[i], summary_metadata=metadata[i]
            )

    return write_batch


def layer_items(
    snapshots: Sequence[LayerSnapshot], full: bool, channel_dtype: np.dtype
) -> list[Item]:
    """One logged step's items: every layer's summary record, and its snapshots if ``full``."""
    configs = [snap.config for snap in snapshots]
    infos = [
        {
            "training": float(snap.training),
            "trainable": float(snap.trainable),
            "count": snap.count,
            "momentum": snap.momentum,
            "full": float(full),
        }
        for snap in snapshots
    ]
    summaries = records.summary_records(configs, [snap.values for snap in snapshots], infos)
    items: list[Item] = [
        (
            metadata.layer_tag(c.path, metadata.SUFFIX_SUMMARY),
            record,
            functools.partial(records.layer_summary_content, c),
        )
        for c, record in zip(configs, summaries)
    ]
    if full:
        items += [
            (
                metadata.layer_tag(c.path, metadata.SUFFIX_CHANNELS),
                records.channel_record(c, snap.values, channel_dtype),
                functools.partial(records.layer_channels_content, c),
            )
            for c, snap in zip(configs, snapshots)
        ]
        items += [
            (
                metadata.layer_tag(c.path, metadata.SUFFIX_REPLICAS),
                records.replica_record(*snap.replicas),
                functools.partial(records.layer_replicas_content, c, len(snap.replicas[0])),
            )
            for c, snap in zip(configs, snapshots)
            if snap.replicas is not None
        ]
        items += [
            (
                metadata.layer_tag(c.path, metadata.SUFFIX_CALLS),
                records.replica_record(*snap.calls),
                functools.partial(records.layer_calls_content, c, len(snap.calls[0])),
            )
            for c, snap in zip(configs, snapshots)
            if snap.calls is not None
        ]
    return items


def event_pb2() -> Any:
    """TensorBoard's ``Event`` protobuf module (no TensorFlow needed)."""
    from tensorboard.compat.proto import event_pb2

    return event_pb2


def _tensor_event(tag: str, tensor: np.ndarray, step: int, serialized_metadata: bytes) -> Any:
    """The ``Event`` ``tf.summary.write(tag, tensor, step, metadata)`` writes, built without TF."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.util import tensor_util

    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(tensor))
    if serialized_metadata:
        value.metadata.ParseFromString(serialized_metadata)
    return event_pb2().Event(
        wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value])
    )


def worker_temp_dir(strategy: Any) -> Optional[str]:
    """None where this process writes summaries; on a non-chief worker a new temporary directory.

    TensorFlow's multi-worker convention: only the chief writes summaries
    (``strategy.extended.should_save_summary``). Other workers do the same work
    (the strategy's collectives need every worker) into a temporary directory
    that the caller deletes when done.
    """
    try:
        chief = bool(strategy.extended.should_save_summary)
    except NotImplementedError:  # strategies without the notion
        chief = True
    return None if chief else tempfile.mkdtemp(prefix="tb_bn_worker_")


def _check_writable(directory: str) -> None:
    """Fail before training starts when ``directory`` cannot hold event files."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".tb_bn_write_check"):
            pass
    except OSError as err:
        raise PermissionError(
            f"tb_bn_plugin cannot write event files to {directory!r}: {err.strerror or err}. "
            "Pass a writable log_dir."
        ) from err


def write_graph(graph_def: Any, writer_or_logdir: Any) -> None:
    """Write ``graph_def`` as the run graph of a ``tf.summary`` writer or log directory.

    TensorBoard shows it in the Graphs tab and the BN plugin analyses it. Must
    be called eagerly (not inside a ``tf.function``).
    """
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2 as tf_graph_pb2

    if not isinstance(graph_def, tf_graph_pb2.GraphDef):
        graph_def = tf_graph_pb2.GraphDef.FromString(graph_def.SerializeToString())
    owns_writer = isinstance(writer_or_logdir, (str, os.PathLike))
    writer = (
        tf.summary.create_file_writer(os.fspath(writer_or_logdir))
        if owns_writer
        else writer_or_logdir
    )
    with writer.as_default(), tf.summary.record_if(True):
        tf.summary.graph(graph_def)
    writer.flush()
    if owns_writer:
        writer.close()
