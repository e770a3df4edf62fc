"""tf-keras (legacy Keras 2, ``TF_USE_LEGACY_KERAS=1``) glue for capture and the gap probe.

tf-keras' ``BatchNormalizationBase`` computes its training-mode statistics on
one of two paths:

* non-fused (``fused=False``, inputs not of rank 4/5, ``virtual_batch_size``,
  ``renorm``, ``adjustment``): ``_moments(inputs, reduction_axes, keep_dims,
  mask)`` returns the batch mean and *biased* variance the layer normalises
  with and updates its moving statistics with. With ``virtual_batch_size`` it
  returns one pair per virtual batch (virtual batch ``g`` of ``G`` holds samples
  ``g, g + G, g + 2G, ...``: the batch is reshaped to ``[virtual_batch_size,
  G, ...]``); the moving statistics are updated with their mean over the
  virtual batches, and that mean is what is captured. With ``renorm`` the
  layer normalises with the batch moments and then applies the r/d
  correction; the batch moments are captured.
* fused (the default for rank-4/5 inputs): one ``fused_batch_norm`` kernel
  normalises with the biased batch variance but returns the *Bessel-corrected*
  (unbiased, n/(n-1) times larger) variance, and outside XLA it returns the
  already-updated moving statistics instead of the batch statistics. Neither
  output is the batch statistic, so the capture wrapper computes the batch
  moments of the layer's input itself with the class's ``_moments`` (one
  extra reduction over the input per layer), only in the steps whose
  statistics will be logged (``StatsCapture.capture_next_steps``). The moving
  variance of a fused layer therefore follows the unbiased batch variance:
  it settles n/(n-1) above the mean logged (biased) batch variance.

tf-keras has no ``StatelessScope``: a training-mode call assigns the moving
statistics. ``restoring`` reads the model's non-trainable and metric
variables before the probe's passes and assigns the read values back after
them, inside the same ``tf.function``, so every pass starts from and ends at
the state training left, bit for bit.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import tensorflow as tf

_BN_MODULE = "tf_keras.src.layers.normalization.batch_normalization"

# Writes one layer's captured (C,) mean, (C,) biased variance and scalar count;
# ``masked`` says whether the count came from a mask.
Record = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, bool], None]


def is_legacy(obj: Any) -> bool:
    """Whether ``obj`` is a tf-keras layer or model (tf-keras imported by whoever built it)."""
    tf_keras = sys.modules.get("tf_keras")
    return tf_keras is not None and isinstance(obj, tf_keras.layers.Layer)


def is_batchnorm(layer: Any) -> bool:
    """Whether ``layer`` is a tf-keras BatchNormalization (v1, v2 or synchronized)."""
    module = sys.modules.get(_BN_MODULE)
    return module is not None and isinstance(layer, module.BatchNormalizationBase)


def child_layers(layer: Any) -> list[Any]:
    """The layers directly tracked by a tf-keras layer or model, in creation order."""
    return list(layer._flatten_layers(include_self=False, recursive=False))


def channel_axis(layer: Any) -> Any:
    """A built layer's channel axis in its input's coordinates: an int, or the axis list if several."""
    axes = [a - 1 if layer.virtual_batch_size is not None else a for a in layer.axis]
    return axes[0] if len(axes) == 1 else axes


def normalises_with_batch_moments(layer: Any) -> bool:
    """Whether training mode is a plain normalisation with the captured batch moments."""
    return not layer.renorm and layer.virtual_batch_size is None and layer.adjustment is None


def batch_moments(
    layer: Any, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """(C,) mean and biased variance of ``inputs`` over every axis but the channel axis.

    Computed by the layer class's own ``_moments`` (so a synchronized layer's are
    global); over the whole batch, also for a virtual-batch layer.
    """
    inputs = tf.cast(inputs, layer._param_dtype)
    axis = channel_axis(layer)
    axes = [i for i in range(inputs.shape.rank) if i != axis]
    mean, variance = type(layer)._moments(layer, inputs, axes, keep_dims=False, mask=mask)
    return _flat(mean), _flat(variance)


def _flat(t: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(t, tf.float32), [-1])


def install_capture(layer: Any, record: Record, due: tf.Variable) -> str:
    """Wrap the method that yields ``layer``'s training-mode statistics; returns its name.

    ``due`` (a boolean variable) gates the fused path's extra moments
    computation: steps that run while it is False capture nothing there.
    """
    if layer.fused:
        name, wrapper = "_fused_batch_norm", _wrap_fused(layer, record, due)
    else:
        name, wrapper = "_moments", _wrap_moments(layer, record)
    object.__setattr__(layer, name, wrapper)
    return name


def _wrap_moments(layer: Any, record: Record):
    original = type(layer)._moments.__get__(layer)
    axis = layer.axis[0]

    def _moments(inputs, reduction_axes, keep_dims, mask=None):
        mean, variance = original(inputs, reduction_axes, keep_dims, mask=mask)
        # keep_dims (virtual batches): one moment per virtual batch; average them like the update does.
        per_channel = (
            [i for i in range(mean.shape.rank) if i != axis] if mean.shape.rank > 1 else []
        )
        channels = tf.size(layer.moving_mean, out_type=tf.int64)
        groups = tf.cast(tf.size(mean, out_type=tf.int64) // channels, tf.float32)
        if mask is None:
            count = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, tf.float32) / groups
        else:
            count = tf.reduce_sum(tf.cast(mask, tf.float32)) / groups
        record(
            _flat(tf.reduce_mean(mean, axis=per_channel)),
            _flat(tf.reduce_mean(variance, axis=per_channel)),
            count,
            mask is not None,
        )
        return mean, variance

    return _moments


def _wrap_fused(layer: Any, record: Record, due: tf.Variable):
    original = type(layer)._fused_batch_norm.__get__(layer)

    def _fused_batch_norm(inputs, mask, training):
        outputs = original(inputs, mask=mask, training=training)

        def measure() -> tf.Tensor:
            # The kernel ignores the mask: so do its statistics.
            mean, variance = batch_moments(layer, inputs)
            count = tf.cast(
                tf.size(inputs, out_type=tf.int64) // tf.size(mean, out_type=tf.int64), tf.float32
            )
            record(mean, variance, count, False)
            return tf.constant(True)

        def capture() -> tf.Tensor:
            return tf.cond(due, measure, lambda: tf.constant(False))

        tf.__internal__.smart_cond.smart_cond(training, capture, lambda: tf.constant(False))
        return outputs

    return _fused_batch_norm


# -- the gap probe ----------------------------------------------------------------


class ProbeAdapter:
    """How ``probe.GapProbe`` reaches a tf-keras model's compiled loss/metrics and keeps its state."""

    supports_model_scope = False  # tf-keras dropout advances stateful RNG ops no scope can undo

    def __init__(self, model: Any) -> None:
        self._model = model

    def compiled_loss(self) -> Any:
        return getattr(self._model, "compiled_loss", None)

    def compiled_metrics(self) -> Any:
        return getattr(self._model, "compiled_metrics", None)

    @staticmethod
    def is_built(container: Any) -> bool:
        return bool(getattr(container, "_built", False))

    @staticmethod
    def metric_results(container: Any) -> dict[str, Any]:
        return {m.name: m.result() for m in container.metrics}

    @staticmethod
    def moments(layer: Any, inputs: tf.Tensor, mask: Any) -> tuple[tf.Tensor, tf.Tensor]:
        return batch_moments(layer, inputs, mask)

    @staticmethod
    def normalises_with_batch_moments(layer: Any) -> bool:
        return normalises_with_batch_moments(layer)

    def stateless(self) -> contextlib.AbstractContextManager:
        return restoring(_state_variables(self._model))

    @staticmethod
    def check_probe(refs: Sequence[Any], size: int) -> None:
        """Raise ``ValueError`` when a layer cannot run in training mode on ``size`` samples."""
        for ref in refs:
            virtual = ref.layer.virtual_batch_size
            if virtual is not None and size % virtual:
                raise ValueError(
                    f"the probe batch of {size} samples is not a multiple of virtual_batch_size={virtual} "
                    f"of layer {ref.path!r}; pass probe_size or probe_data with a multiple of it"
                )


def _state_variables(model: Any) -> list[tf.Variable]:
    """Every variable a forward pass or a metric update may assign: non-trainable and metric variables."""
    out: dict[int, tf.Variable] = {}
    for v in list(model.non_trainable_variables) + [v for m in model.metrics for v in m.variables]:
        out.setdefault(id(v), v)
    return list(out.values())


@contextlib.contextmanager
def restoring(variables: Sequence[tf.Variable]) -> Iterator[None]:
    """Inside a ``tf.function``: whatever is assigned to ``variables`` in the block is undone after it.

    The values are read on entry and assigned back on exit; automatic control
    dependencies order the reads before, and the restores after, the block's
    assignments. Bit-exact: the restored values are the read ones.
    """
    saved = [tf.identity(v.read_value()) for v in variables]
    yield
    for v, value in zip(variables, saved):
        v.assign(value)
