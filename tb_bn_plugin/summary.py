"""Writing BN Internals summaries with ``tf.summary``.

``SummaryWriter`` owns one run's ``tf.summary`` file writer and writes every
tag's ``SummaryMetadata`` once, with the tag's first event in its file.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import tensorflow as tf

from tb_bn_plugin import graph_io, metadata, records
from tb_bn_plugin.series import LayerConfig

if TYPE_CHECKING:
    from tb_bn_plugin.capture import LayerSnapshot


class SummaryWriter:
    """Writes BN Internals tags of one run into ``logdir``."""

    def __init__(self, logdir: str, max_queue: int = 100, flush_millis: int = 30_000) -> None:
        self.logdir = logdir
        self._writer = tf.summary.create_file_writer(logdir, max_queue=max_queue, flush_millis=flush_millis)
        self._written_tags: set[str] = set()

    def layer_summary(self, config: LayerConfig, step: int, record: np.ndarray) -> None:
        """Write one layer's summary record (see ``records.summary_record``)."""
        tag = metadata.layer_tag(config.path, "summary")
        self._write(tag, record, step, lambda: {
            "kind": metadata.KIND_LAYER_SUMMARY,
            "layer": config.to_json(),
            "info": list(metadata.INFO_FIELDS),
            "rows": list(records.summary_stats(config)),
            "columns": list(metadata.SUMMARY_COLUMNS),
        })

    def layer_channels(self, config: LayerConfig, step: int, record: np.ndarray) -> None:
        """Write one layer's per-channel snapshot (see ``records.channel_record``)."""
        tag = metadata.layer_tag(config.path, "channels")
        self._write(tag, record, step, lambda: {
            "kind": metadata.KIND_LAYER_CHANNELS,
            "layer": config.to_json(),
            "rows": list(config.stats()),
        })

    def layer_replicas(self, config: LayerConfig, step: int, record: np.ndarray) -> None:
        """Write one layer's per-replica batch statistics (see ``records.replica_record``)."""
        tag = metadata.layer_tag(config.path, "replicas")
        self._write(tag, record, step, lambda: {
            "kind": metadata.KIND_LAYER_REPLICAS,
            "layer": config.to_json(),
            "replicas": int(record.shape[0]),
            "columns": list(metadata.REPLICA_COLUMNS),
        })

    def layer_step(self, snapshots: Sequence["LayerSnapshot"], step: int, full: bool, channel_dtype: np.dtype) -> None:
        """Write one logged step: every layer's summary record, and per-channel snapshots
        (with per-replica statistics where captured) if ``full``."""
        for snap in snapshots:
            info = {
                "training": float(snap.training),
                "trainable": float(snap.trainable),
                "count": snap.count,
                "momentum": snap.momentum,
                "full": float(full),
            }
            self.layer_summary(snap.config, step, records.summary_record(snap.config, snap.values, info))
            if full:
                self.layer_channels(snap.config, step, records.channel_record(snap.config, snap.values, channel_dtype))
            if full and snap.replicas is not None:
                self.layer_replicas(snap.config, step, records.replica_record(*snap.replicas))

    def write(self, tag: str, tensor: np.ndarray, step: int, content: dict[str, Any]) -> None:
        """Write any BN Internals payload; ``content`` describes it (needs a ``kind``)."""
        self._write(tag, tensor, step, lambda: content)

    def graph(self, graph_def: Any) -> None:
        """Write ``graph_def`` as this run's graph (TensorBoard's Graphs tab; analysed by the plugin)."""
        graph_io.write_graph(graph_def, self._writer)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def _write(self, tag: str, tensor: np.ndarray, step: int, content) -> None:
        # Metadata goes with a tag's first event in this file only: TensorBoard's
        # loaders (Python and Rust) take a time series' metadata from its first
        # event, and repeating it would multiply the bytes of small records.
        serialized = b""
        if tag not in self._written_tags:
            serialized = metadata.create_summary_metadata(content()).SerializeToString()
            self._written_tags.add(tag)
        with self._writer.as_default():
            tf.summary.write(tag=tag, tensor=tensor, step=step, metadata=serialized)


def worker_temp_dir(strategy: tf.distribute.Strategy) -> Optional[str]:
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
