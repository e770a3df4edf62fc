"""Find a model's BatchNormalization layers and capture their batch statistics in training.

Owns layer discovery (``find_batchnorm_layers``, ``BatchNormRef``), a layer's
static facts (``layer_config``, its channel axis) and ``StatsCapture``: the
capture variables and the snapshot that reads them.

Batch statistics are captured inside the real training step: the layer's
Keras flavour (``compat``) wraps, on the layer instance, the method that
computes the mean and biased variance the layer normalises with (Keras 3:
``_moments``; tf-keras: ``_moments`` or its fused path), so that, while the
train function is traced, the wrapper also assigns them to capture variables
owned by this module. Nothing the model computes changes: the wrapper returns
the original tensors, and the capture variables are not part of the model.

Under a ``tf.distribute`` strategy the capture variables are replica-local
(``ON_READ``, no aggregation): every replica assigns its own copy, with no
cross-replica communication in the step, and a snapshot reads every local
copy (``experimental_local_results``) in the same one traced function. The
layer's logged batch statistics and count are the first replica's (what it
normalised with, and what Keras' first-replica moving statistics ingest); an
unsynchronised layer on several replicas also gets every replica's
statistics (``LayerSnapshot.replicas``). A ``synchronized=True`` layer's
statistics are the global ones every replica normalised with, and its count is
the global one (see ``_global_count``). Under MultiWorkerMirroredStrategy the
other workers' replicas are read with one all-gather per snapshot (not per
training step).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata, records
from tb_bn_plugin.records import LayerSnapshot
from tb_bn_plugin.series import LayerConfig
from tb_bn_plugin.training.compat import flavour_of
from tb_bn_plugin.training.compat.base import InstalledCapture, KerasFlavour, Record
from tb_bn_plugin.training.lazy_tf import tf


class UnsupportedLayerError(ValueError):
    """A BatchNormalization layer this tool cannot capture (e.g. unbuilt or odd axis)."""


@dataclasses.dataclass
class BatchNormRef:
    """A BatchNormalization layer and its path inside the model."""

    path: str
    layer: Any  # keras.layers.BatchNormalization

    @property
    def built(self) -> bool:
        return bool(self.layer.built) and getattr(self.layer, "moving_mean", None) is not None

    @property
    def channels(self) -> int:
        """Number of channels of a built layer (tf-keras keeps broadcast-shaped variables)."""
        return math.prod(int(d) for d in self.layer.moving_mean.shape)

    @property
    def flavour(self) -> KerasFlavour:
        """The adapter of the Keras flavour the layer belongs to."""
        return flavour_of(self.layer)

    def normalises_with_batch_moments(self) -> bool:
        """Whether training mode normalises with the captured batch moments (no renorm etc.)."""
        return self.flavour.normalises_with_batch_moments(self.layer)

    def channel_axis(self, rank: Optional[int] = None) -> int:
        """The built layer's channel axis in its input's coordinates, from 0 when ``rank`` is given.

        Raises ``UnsupportedLayerError`` when the layer normalises over several axes.
        """
        axis = self.flavour.channel_axis(self.layer)
        if not isinstance(axis, int):
            raise UnsupportedLayerError(
                f"BatchNormalization layer {self.path!r} normalises over axis={axis!r}; "
                "only a single integer channel axis is supported"
            )
        return axis + rank if axis < 0 and rank is not None else axis


def find_batchnorm_layers(
    model: Any, patterns: Optional[Sequence[str]] = None
) -> list[BatchNormRef]:
    """Every BatchNormalization layer reachable from ``model``, in model order.

    Walks sub-models, custom layers and subclassed models depth first. A
    layer's path joins the names of its ancestors below ``model`` with ``/``
    (``encoder/bn``), so equally named layers in different sub-models stay
    apart. A layer reachable twice is reported once, under its first path.
    ``patterns``: optional glob patterns; only layers whose path matches one
    are returned.
    """
    refs: list[BatchNormRef] = []
    seen: set[int] = set()

    def walk(layer: Any, prefix: str) -> None:
        for child in flavour_of(layer).child_layers(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else child.name
            if flavour_of(child).is_batchnorm(child):
                refs.append(BatchNormRef(path, child))
            walk(child, path)

    walk(model, "")
    if patterns is not None:
        refs = [r for r in refs if any(fnmatch.fnmatchcase(r.path, p) for p in patterns)]
    return refs


def require_built(refs: Sequence[BatchNormRef], before: str) -> None:
    """Raise ``UnsupportedLayerError`` naming unbuilt layers; ``before``: what needs them built."""
    unbuilt = [r.path for r in refs if not r.built]
    if unbuilt:
        raise UnsupportedLayerError(
            f"BatchNormalization layers {unbuilt} are not built: call the model on data once "
            f"before {before}"
        )


def layer_config(ref: BatchNormRef, index: int) -> LayerConfig:
    """Static facts of a built BN layer; ``UnsupportedLayerError`` if it cannot be captured."""
    layer = ref.layer
    if not ref.built:
        raise UnsupportedLayerError(f"BatchNormalization layer {ref.path!r} is not built yet")
    rank = len(layer.input_spec.shape) if layer.input_spec and layer.input_spec.shape else None
    if rank is None:
        rank = layer.input_spec.ndim if layer.input_spec else None
    axis = ref.channel_axis(rank)
    return LayerConfig(
        path=ref.path,
        index=index,
        channels=ref.channels,
        axis=int(axis),
        momentum=float(layer.momentum),
        epsilon=float(layer.epsilon),
        center=bool(layer.center),
        scale=bool(layer.scale),
        synchronized=bool(getattr(layer, "synchronized", False)),
        renorm=bool(getattr(layer, "renorm", False)),
        rank=rank,
    )


class _CaptureSlots:
    """Replica-local variables one layer's wrapped ``_moments`` writes to in every training step."""

    def __init__(self, channels: int, strategy: tf.distribute.Strategy) -> None:
        kwargs = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.NONE,
        )
        with strategy.scope():
            self.stats = tf.Variable(
                tf.zeros([2, channels], tf.float32), name="bn_capture_stats", **kwargs
            )
            self.count = tf.Variable(0.0, dtype=tf.float32, name="bn_capture_count", **kwargs)
            self.step = tf.Variable(tf.constant(-1, tf.int64), name="bn_capture_step", **kwargs)


class StatsCapture:
    """Installs the capture wrappers on a model's BN layers and reads snapshots.

    Args:
      refs: the layers to capture (built).
      clock: a variable holding the number of training steps done (the
        optimizer's ``iterations``); the wrapper records its value so a snapshot
        can tell whether a layer trained in the latest step.
      strategy: the distribution strategy the capture variables are created under.
    """

    def __init__(
        self, refs: Sequence[BatchNormRef], clock: Any, strategy: tf.distribute.Strategy
    ) -> None:
        self.configs = [layer_config(ref, i) for i, ref in enumerate(refs)]
        self._refs = list(refs)
        self._clock = clock
        self._strategy = strategy
        self._local = strategy.experimental_local_results
        self._slots = [_CaptureSlots(c.channels, strategy) for c in self.configs]
        local_replicas = len(self._local(self._slots[0].count)) if self._slots else 1
        # Multi-worker: the other workers' replicas are read with one all-gather per snapshot.
        self._cross_worker = strategy.num_replicas_in_sync > local_replicas
        self.replicas = strategy.num_replicas_in_sync
        # Layers whose every replica's statistics are read: unsynchronised, on several replicas.
        self._per_replica = [
            i for i, c in enumerate(self.configs) if self.replicas > 1 and not c.synchronized
        ]
        with strategy.scope():
            self._due = tf.Variable(
                True,
                trainable=False,
                name="bn_capture_due",
                synchronization=tf.VariableSynchronization.ON_WRITE,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        self._due_value = True
        self._installed: list[InstalledCapture] = []
        self._enabled = True
        self._snapshot_fn: Any = None  # traced at the first snapshot

    @property
    def refs(self) -> list[BatchNormRef]:
        """The captured layers."""
        return list(self._refs)

    # -- wrapping ---------------------------------------------------------------

    def install(self) -> None:
        """Wrap each layer's statistics method; takes effect in functions traced afterwards."""
        self._installed = [
            ref.flavour.install_capture(ref.layer, self._recorder(ref.layer, slots), self._due)
            for ref, slots in zip(self._refs, self._slots)
        ]

    def uninstall(self) -> None:
        """Restore the layers' own methods."""
        for installed in self._installed:
            installed.uninstall()
        self._installed = []

    @property
    def gated(self) -> bool:
        """Whether some installed wrapper does extra work that ``capture_next_steps`` can skip."""
        return any(installed.gated for installed in self._installed)

    def capture_next_steps(self, due: bool) -> None:
        """Whether the training steps run from now on must capture (default: True).

        Only wrappers that add computation (``InstalledCapture.gated``) honour it; a
        step run while it is False leaves those layers' captured statistics as
        they were (a snapshot then reports them as not trained at that step).
        """
        if self._due_value != due:
            self._due.assign(due)
            self._due_value = due

    def paused(self) -> Paused:
        """Context manager: functions traced inside it do not write the capture variables."""
        return Paused(self)

    def _recorder(self, layer: Any, slots: _CaptureSlots) -> Record:
        """What a wrapper calls with the (C,) mean, (C,) biased variance and count it saw."""
        capture = self

        def record(mean: tf.Tensor, variance: tf.Tensor, count: tf.Tensor, masked: bool) -> None:
            if not capture._enabled:
                return
            channels = slots.stats.shape[1]
            slots.stats.assign(
                tf.stack(
                    [
                        tf.reshape(tf.cast(mean, tf.float32), [channels]),
                        tf.reshape(tf.cast(variance, tf.float32), [channels]),
                    ]
                )
            )
            # Keras computes masked moments per replica, even when synchronized.
            if not masked and getattr(layer, "synchronized", False):
                count = _global_count(count)
            slots.count.assign(count)
            slots.step.assign(tf.cast(tf.convert_to_tensor(capture._clock), tf.int64))

        return record

    # -- reading ----------------------------------------------------------------

    def _gather(self):
        first = [[self._local(v)[0] for v in (s.stats, s.count, s.step)] for s in self._slots]
        floats = []
        for ref, (stats, _, _) in zip(self._refs, first):
            layer = ref.layer
            parts = [stats, layer.moving_mean, layer.moving_variance]
            if layer.scale:
                parts.append(layer.gamma)
            if layer.center:
                parts.append(layer.beta)
            floats.extend(_flat(p) for p in parts)
        counts = tf.stack([c for _, c, _ in first]) if first else tf.zeros([0])
        steps = tf.stack([t for _, _, t in first]) if first else tf.zeros([0], tf.int64)
        return _concat(floats), counts, steps, self._replica_rows()

    def _replica_rows(self) -> tf.Tensor:
        """(R, W): per replica, each ``_per_replica`` layer's [count, mean (C), variance (C)]."""
        if not self._per_replica:
            return tf.zeros([0, 0])

        def row(count_stats: list) -> tf.Tensor:
            return tf.expand_dims(_concat([_flat(v) for v in count_stats]), 0)

        slots = [v for i in self._per_replica for v in (self._slots[i].count, self._slots[i].stats)]
        if self._cross_worker:
            # In replica context a replica-local variable reads as that replica's own copy.
            return self._strategy.gather(self._strategy.run(lambda: row(slots)), axis=0)
        local = [self._local(v) for v in slots]
        return tf.concat([row([values[r] for values in local]) for r in range(len(local[0]))], 0)

    def snapshot(self, steps_done: int) -> list[LayerSnapshot]:
        """Every layer's statistics after the step that brought the clock to ``steps_done``.

        One device round trip for all layers; under MultiWorkerMirroredStrategy
        with unsynchronised layers, one all-gather of the per-replica statistics,
        so every worker must take snapshots at the same steps.
        """
        if self._snapshot_fn is None:
            # Called as a concrete function: TensorFlow's frequent-retracing detector (which
            # keys on _gather's code, shared by every capture: one per model) never sees it,
            # so fitting model after model (folds, tuner trials) prints no retracing warning.
            self._snapshot_fn = tf.function(self._gather, autograph=False).get_concrete_function()
        floats, counts, captured_at, replica_rows = (t.numpy() for t in self._snapshot_fn())
        floats = floats.astype(np.float64)
        replicas = self._split_replicas(replica_rows.astype(np.float64))
        out = []
        offset = 0
        for i, (config, ref, count, at) in enumerate(
            zip(self.configs, self._refs, counts, captured_at)
        ):
            c = config.channels
            training = bool(at == steps_done - 1)
            values: dict[str, np.ndarray] = {}
            for stat in (metadata.BATCH_MEAN, metadata.BATCH_VARIANCE) + config.stats()[2:]:
                values[stat] = floats[offset : offset + c]
                offset += c
            if not training:
                values[metadata.BATCH_MEAN] = np.full(c, np.nan)
                values[metadata.BATCH_VARIANCE] = np.full(c, np.nan)
            out.append(
                LayerSnapshot(
                    config=config,
                    values=values,
                    training=training,
                    trainable=bool(ref.layer.trainable),
                    count=float(count) if training else math.nan,
                    momentum=float(ref.layer.momentum),
                    replicas=replicas.get(i) if training else None,
                )
            )
        return out

    def _split_replicas(
        self, rows: np.ndarray
    ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Layer index -> (count (R,), mean (R, C), variance (R, C)) from ``_replica_rows``."""
        out = {}
        offset = 0
        for i in self._per_replica:
            width = 1 + 2 * self.configs[i].channels
            out[i] = records.split_replica_record(
                rows[:, offset : offset + width], self.configs[i].channels
            )
            offset += width
        return out


def _flat(value: Any) -> tf.Tensor:
    return tf.reshape(tf.cast(tf.convert_to_tensor(value), tf.float32), [-1])


def _concat(parts: list) -> tf.Tensor:
    return tf.concat(parts, 0) if parts else tf.zeros([0])


def _global_count(count: tf.Tensor) -> tf.Tensor:
    """The count over all replicas, as synchronized BatchNormalization normalises with.

    The per-replica count times the number of replicas in sync: exact when the
    global batch is split evenly across replicas (MirroredStrategy splits
    evenly; only a last batch that does not divide evenly is approximated).
    No collective is issued: an extra all-reduce in the step breaks the
    collective order across replicas ("Shape mismatch in the collective
    instance" on 2 CPU replicas) and would cost a round trip per layer.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return count
    return count * float(context.num_replicas_in_sync)


class Paused:
    """Context: a capture's wrappers record nothing while it is open (functions traced
    inside, e.g. the gap probe's, leave the captured statistics alone). Serves
    ``StatsCapture`` and ``HostStatsCapture`` alike: both gate on ``_enabled``."""

    def __init__(self, capture: Any) -> None:
        self._capture = capture

    def __enter__(self) -> None:
        self._capture._enabled = False

    def __exit__(self, *exc: Any) -> None:
        self._capture._enabled = True
