"""One adapter per Keras flavour, behind one protocol: ``base.KerasFlavour``.

* ``base``: the protocol (what the training code needs from a flavour) and its types.
* ``keras3``: Keras 3 on TensorFlow (``keras.layers.BatchNormalization``).
* ``keras3_jax``, ``keras3_torch``: Keras 3 on JAX and on PyTorch (``base.HostKerasFlavour``:
  no TensorFlow needed), on their shared base ``keras3_host``.
* ``tf_keras``: tf-keras (legacy Keras 2, ``TF_USE_LEGACY_KERAS=1``).
* ``bound_keras``: which Keras the package's callbacks subclass in this process.

``flavour_of`` picks the adapter for a model or layer. The rest of
``training`` reaches a flavour's internals only through it. Adapters are
imported on first use, so TensorFlow is imported only for TensorFlow models.
"""

from __future__ import annotations

import sys
from typing import Any

from tb_bn_plugin.training.compat.base import KerasFlavour


def flavour_of(obj: Any) -> KerasFlavour:
    """The adapter for a Keras model or layer: tf-keras for tf-keras objects, else Keras 3 on
    the backend Keras runs on."""
    tf_keras = sys.modules.get("tf_keras")
    if tf_keras is not None and isinstance(obj, tf_keras.layers.Layer):
        from tb_bn_plugin.training.compat.tf_keras import TF_KERAS

        return TF_KERAS
    backend = _keras3_backend()
    if backend == "jax":
        from tb_bn_plugin.training.compat.keras3_jax import KERAS3_JAX

        return KERAS3_JAX
    if backend == "torch":
        from tb_bn_plugin.training.compat.keras3_torch import KERAS3_TORCH

        return KERAS3_TORCH
    from tb_bn_plugin.training.compat.keras3 import KERAS3

    return KERAS3


def all_flavours() -> tuple[KerasFlavour, ...]:
    """Every adapter (imports each; none imports its framework at module level)."""
    from tb_bn_plugin.training.compat.keras3 import KERAS3
    from tb_bn_plugin.training.compat.keras3_jax import KERAS3_JAX
    from tb_bn_plugin.training.compat.keras3_torch import KERAS3_TORCH
    from tb_bn_plugin.training.compat.tf_keras import TF_KERAS

    return (TF_KERAS, KERAS3, KERAS3_JAX, KERAS3_TORCH)


def keras_runs_on_tensorflow() -> bool:
    """Whether the models this process builds run on TensorFlow (tf-keras, or Keras 3's
    ``tensorflow`` backend), before any model exists."""
    from tb_bn_plugin.training.compat.bound_keras import bound_keras

    keras = bound_keras()
    backend = getattr(getattr(keras, "backend", None), "backend", None)
    return not callable(backend) or backend() == "tensorflow"


def _keras3_backend() -> str:
    """The backend of the Keras 3 in this process (``tensorflow`` when Keras 3 is not loaded)."""
    keras = sys.modules.get("keras")
    backend = getattr(getattr(keras, "backend", None), "backend", None)
    return backend() if callable(backend) else "tensorflow"
