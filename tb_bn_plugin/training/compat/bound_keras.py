"""Which Keras the package's callbacks belong to in this process, and its ``Callback`` class.

The package's Keras callbacks (``BatchNormCallback``, ``PreciseStatsMonitor``)
subclass the ``Callback`` of the Keras whose ``model.fit`` runs them, and
users reach that Keras as ``tf.keras`` (or through ``keras``/``tf_keras``
directly). TensorFlow binds ``tf.keras`` when it is first used: to Keras 3
by default, to tf-keras (legacy Keras 2) when ``TF_USE_LEGACY_KERAS=1`` was
set before TensorFlow was imported. This module is the one place the package
reads that binding; ``tests/training/test_legacy_keras.py`` runs the
tf-keras case. Otherwise ``tf.keras`` is Keras 3, whose callbacks serve every
backend: it is taken from ``keras`` directly, without importing TensorFlow
(JAX and PyTorch users may not have it).

Which adapter handles a given model or layer is decided per object by
``compat.flavour_of``, not here.
"""

from __future__ import annotations

import os
from types import ModuleType


def bound_keras() -> ModuleType:
    """The Keras module TensorFlow binds to ``tf.keras`` here (see the module docstring)."""
    # TensorFlow's own test for the binding (tensorflow/python/util/lazy_loader.py).
    if os.environ.get("TF_USE_LEGACY_KERAS", None) in ("true", "True", "1"):
        import tensorflow as tf

        return tf.keras
    import keras

    return keras


# The base class of this package's Keras callbacks.
Callback = bound_keras().callbacks.Callback
