"""Keras 3: the ``KerasFlavour`` of ``keras.layers.BatchNormalization`` (TensorFlow backend).

``Keras3`` is also the base of the JAX and PyTorch flavours (``keras3_jax``,
``keras3_torch``), which share its discovery, data and gap-container methods.

Capture: a Keras 3 BatchNormalization layer computes its training-mode
statistics in ``_moments(inputs, mask)``, which returns exactly the mean and
biased variance the layer then normalises with and updates its moving
statistics with; the capture wrapper records what it returns.

No state changes: every probe pass runs inside a ``keras.StatelessScope``,
which intercepts the moving-statistics assignments a BN layer makes in
training mode, the seed-generator advances of dropout-like layers, metric
updates and ``add_loss`` calls, while reads see the current values.

The ``keras`` package is imported only when a Keras 3 object is handled:
under ``TF_USE_LEGACY_KERAS=1`` this module stays importable without it.
TensorFlow is imported only by the methods that build TensorFlow ops.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from tb_bn_plugin.training.compat.base import InstalledCapture, Record

if TYPE_CHECKING:
    import tensorflow as tf


def _keras() -> Any:
    import keras

    return keras


class Keras3:
    """``KerasFlavour`` for Keras 3 models and layers."""

    supports_model_scope = True
    uses_tensorflow = True

    # -- discovery ------------------------------------------------------------

    @staticmethod
    def owns(obj: Any) -> bool:
        keras = sys.modules.get("keras")
        return keras is not None and isinstance(obj, keras.layers.Layer)

    @staticmethod
    def is_batchnorm(layer: Any) -> bool:
        keras = sys.modules.get("keras")
        return keras is not None and isinstance(layer, keras.layers.BatchNormalization)

    @staticmethod
    def child_layers(layer: Any) -> Sequence[Any]:
        return getattr(layer, "_layers", ())

    @staticmethod
    def channel_axis(layer: Any) -> Any:
        return layer.axis

    @staticmethod
    def normalises_with_batch_moments(layer: Any) -> bool:
        return not getattr(layer, "renorm", False)

    @staticmethod
    def explicit_strategy(model: Any) -> Optional[tf.distribute.Strategy]:
        return getattr(model, "_distribute_strategy", None)

    @staticmethod
    def steps_done(model: Any) -> int:
        return int(model.optimizer.iterations.numpy())

    # -- capture inside the training step -------------------------------------

    @staticmethod
    def install_capture(layer: Any, record: Record, due: tf.Variable) -> InstalledCapture:
        """Wrap ``_moments`` on the instance (``due`` unused: the wrapper adds no computation)."""
        object.__setattr__(layer, "_moments", _wrap_moments(layer, record))
        return InstalledCapture(layer, "_moments")

    @staticmethod
    def batch_moments(layer: Any, inputs: Any, mask: Any) -> tuple[tf.Tensor, tf.Tensor]:
        import tensorflow as tf

        compute_dtype = _keras().backend.result_type(inputs.dtype, "float32")
        inputs = tf.cast(inputs, compute_dtype)
        # The class's own _moments: the capture wrapper on the instance stays out of this.
        mean, variance = type(layer)._moments(layer, inputs, mask)
        return tf.reshape(tf.cast(mean, tf.float32), [-1]), tf.reshape(
            tf.cast(variance, tf.float32), [-1]
        )

    # -- training data --------------------------------------------------------

    @staticmethod
    def unpack_x_y_sample_weight(data: Any) -> tuple[Any, Any, Any]:
        return _keras().utils.unpack_x_y_sample_weight(data)

    @staticmethod
    def progress_bar(target: Optional[int]) -> Any:
        return _keras().utils.Progbar(target, unit_name="batch")

    # -- the gap probe --------------------------------------------------------

    @staticmethod
    def compiled_loss(model: Any) -> Any:
        return getattr(model, "_compile_loss", None)

    @staticmethod
    def compiled_metrics(model: Any) -> Any:
        return getattr(model, "_compile_metrics", None)

    @staticmethod
    def is_built(container: Any) -> bool:
        return bool(getattr(container, "built", False))

    @staticmethod
    def metric_results(container: Any) -> dict[str, Any]:
        return container.result()

    @staticmethod
    def stateless(model: Any) -> contextlib.AbstractContextManager:
        return _keras().StatelessScope()

    @staticmethod
    def check_probe(refs: Sequence[Any], size: int) -> None:
        """Any probe batch size works for Keras 3 layers."""


def _wrap_moments(layer: Any, record: Record):
    """A Keras 3 layer's ``_moments(inputs, mask)`` that also records what it returns."""
    import tensorflow as tf

    original = type(layer)._moments.__get__(layer)

    def _moments(inputs, mask):
        mean, variance = original(inputs, mask)
        if mask is None:
            count = tf.cast(tf.size(inputs), tf.float32) / float(layer.moving_mean.shape[0])
        else:
            count = tf.reduce_sum(tf.cast(mask, tf.float32))
        record(mean, variance, count, mask is not None)
        return mean, variance

    return _moments


KERAS3 = Keras3()
