"""tf-keras (legacy Keras 2, ``TF_USE_LEGACY_KERAS=1``): its ``KerasFlavour``.

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
variables before each probe pass and assigns the read values back after it,
inside the same ``tf.function``, so every pass starts from and ends at the
state training left, bit for bit. tf-keras dropout draws from stateful RNG
ops no scope can rewind: the gap probe's ``gap_scope="model"`` is not
supported (``supports_model_scope``).

tf-keras is never imported here: a tf-keras object exists only once whoever
built it imported tf-keras (``sys.modules``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import tensorflow as tf

from tb_bn_plugin.training.compat.base import InstalledCapture, Record

_BN_MODULE = "tf_keras.src.layers.normalization.batch_normalization"


def _tf_keras() -> Any:
    return sys.modules["tf_keras"]


class TfKeras:
    """``KerasFlavour`` for tf-keras models and layers."""

    supports_model_scope = False  # tf-keras dropout advances stateful RNG ops no scope can undo
    uses_tensorflow = True

    # -- discovery ------------------------------------------------------------

    @staticmethod
    def owns(obj: Any) -> bool:
        """Whether ``obj`` is a tf-keras layer or model (tf-keras imported by whoever built it)."""
        tf_keras = sys.modules.get("tf_keras")
        return tf_keras is not None and isinstance(obj, tf_keras.layers.Layer)

    @staticmethod
    def is_batchnorm(layer: Any) -> bool:
        """Whether ``layer`` is a tf-keras BatchNormalization (v1, v2 or synchronized)."""
        module = sys.modules.get(_BN_MODULE)
        return module is not None and isinstance(layer, module.BatchNormalizationBase)

    @staticmethod
    def child_layers(layer: Any) -> Sequence[Any]:
        return list(layer._flatten_layers(include_self=False, recursive=False))

    @staticmethod
    def channel_axis(layer: Any) -> Any:
        """The axis in the input's coordinates (a virtual-batch layer's ``axis`` counts the
        extra leading dimension of its reshaped input)."""
        return _channel_axis(layer)

    @staticmethod
    def normalises_with_batch_moments(layer: Any) -> bool:
        return not layer.renorm and layer.virtual_batch_size is None and layer.adjustment is None

    @staticmethod
    def explicit_strategy(model: Any) -> Optional[tf.distribute.Strategy]:
        return getattr(model, "_distribute_strategy", None)

    @staticmethod
    def steps_done(model: Any) -> int:
        return int(model.optimizer.iterations.numpy())

    # -- capture inside the training step -------------------------------------

    @staticmethod
    def install_capture(layer: Any, record: Record, due: tf.Variable) -> InstalledCapture:
        """Wrap ``_fused_batch_norm`` (gated by ``due``) or ``_moments``, whichever it uses."""
        if layer.fused:
            installed = InstalledCapture(layer, "_fused_batch_norm", gated=True)
            wrapper = _wrap_fused(layer, record, due)
        else:
            installed = InstalledCapture(layer, "_moments")
            wrapper = _wrap_moments(layer, record)
        object.__setattr__(layer, installed.attribute, wrapper)
        return installed

    @staticmethod
    def batch_moments(
        layer: Any, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Over every axis but the channel axis, with the layer class's own ``_moments`` (so a
        synchronized layer's are global); over the whole batch, also for a virtual-batch layer."""
        return _batch_moments(layer, inputs, mask)

    # -- training data --------------------------------------------------------

    @staticmethod
    def unpack_x_y_sample_weight(data: Any) -> tuple[Any, Any, Any]:
        return _tf_keras().utils.unpack_x_y_sample_weight(data)

    @staticmethod
    def progress_bar(target: Optional[int]) -> Any:
        return _tf_keras().utils.Progbar(target, unit_name="batch")

    # -- the gap probe --------------------------------------------------------

    @staticmethod
    def compiled_loss(model: Any) -> Any:
        return getattr(model, "compiled_loss", None)

    @staticmethod
    def compiled_metrics(model: Any) -> Any:
        return getattr(model, "compiled_metrics", None)

    @staticmethod
    def is_built(container: Any) -> bool:
        return bool(getattr(container, "_built", False))

    @staticmethod
    def metric_results(container: Any) -> dict[str, Any]:
        return {m.name: m.result() for m in container.metrics}

    @staticmethod
    def stateless(model: Any) -> contextlib.AbstractContextManager:
        return restoring(_state_variables(model))

    @staticmethod
    def check_probe(refs: Sequence[Any], size: int) -> None:
        for ref in refs:
            virtual = ref.layer.virtual_batch_size
            if virtual is not None and size % virtual:
                raise ValueError(
                    f"the probe batch of {size} samples is not a multiple of "
                    f"virtual_batch_size={virtual} of layer {ref.path!r}; pass probe_size or "
                    "probe_data with a multiple of it"
                )


def _channel_axis(layer: Any) -> Any:
    axes = [a - 1 if layer.virtual_batch_size is not None else a for a in layer.axis]
    return axes[0] if len(axes) == 1 else axes


def _batch_moments(
    layer: Any, inputs: tf.Tensor, mask: Optional[tf.Tensor] = None
) -> tuple[tf.Tensor, tf.Tensor]:
    inputs = tf.cast(inputs, layer._param_dtype)
    axis = _channel_axis(layer)
    axes = [i for i in range(inputs.shape.rank) if i != axis]
    mean, variance = type(layer)._moments(layer, inputs, axes, keep_dims=False, mask=mask)
    return _flat(mean), _flat(variance)


def _flat(t: tf.Tensor) -> tf.Tensor:
    return tf.reshape(tf.cast(t, tf.float32), [-1])


def _wrap_moments(layer: Any, record: Record):
    original = type(layer)._moments.__get__(layer)
    axis = layer.axis[0]

    def _moments(inputs, reduction_axes, keep_dims, mask=None):
        mean, variance = original(inputs, reduction_axes, keep_dims, mask=mask)
        # keep_dims (virtual batches): one moment per virtual batch; averaged like the update does.
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
            mean, variance = _batch_moments(layer, inputs)
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


def _state_variables(model: Any) -> list[tf.Variable]:
    """Every variable a forward pass or metric update may assign: non-trainable and metric ones."""
    out: dict[int, tf.Variable] = {}
    for v in list(model.non_trainable_variables) + [v for m in model.metrics for v in m.variables]:
        out.setdefault(id(v), v)
    return list(out.values())


@contextlib.contextmanager
def restoring(variables: Sequence[tf.Variable]) -> Iterator[None]:
    """Inside a ``tf.function``: what the block assigns to ``variables`` is undone after it.

    The values are read on entry and assigned back on exit; automatic control
    dependencies order the reads before, and the restores after, the block's
    assignments. Bit-exact: the restored values are the read ones.
    """
    saved = [tf.identity(v.read_value()) for v in variables]
    yield
    for v, value in zip(variables, saved):
        v.assign(value)


TF_KERAS = TfKeras()
