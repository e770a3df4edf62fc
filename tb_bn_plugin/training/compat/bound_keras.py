"""Which Keras ``tf.keras`` is in this process, and the ``Callback`` base class taken from it.

The package's Keras callbacks (``BatchNormCallback``, ``PreciseStatsMonitor``)
subclass the ``Callback`` of the Keras whose ``model.fit`` runs them, and
users reach that Keras as ``tf.keras`` (or through ``keras``/``tf_keras``
directly). TensorFlow binds ``tf.keras`` when it is first used: to Keras 3
by default, to tf-keras (legacy Keras 2) when ``TF_USE_LEGACY_KERAS=1`` was
set before TensorFlow was imported. This module is the one place the package
reads that binding; ``tests/training/test_legacy_keras.py`` runs the
tf-keras case.

Which adapter handles a given model or layer is decided per object by
``compat.flavour_of``, not here.
"""

from __future__ import annotations

from types import ModuleType

import tensorflow as tf


def bound_keras() -> ModuleType:
    """The Keras module TensorFlow binds to ``tf.keras`` here (see the module docstring)."""
    return tf.keras


# The base class of this package's Keras callbacks.
Callback = bound_keras().callbacks.Callback
