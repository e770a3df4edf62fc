"""One adapter per Keras flavour, behind one protocol: ``base.KerasFlavour``.

* ``base``: the protocol (what the training code needs from a flavour) and its types.
* ``keras3``: Keras 3 (``keras.layers.BatchNormalization``).
* ``tf_keras``: tf-keras (legacy Keras 2, ``TF_USE_LEGACY_KERAS=1``).
* ``bound_keras``: which Keras ``tf.keras`` is in this process, and the ``Callback``
  base class taken from it.

``flavour_of`` picks the adapter for a model or layer. The rest of
``training`` reaches a flavour's internals only through it. May import what
``training`` may import (in practice TensorFlow only).
"""

from __future__ import annotations

from typing import Any

from tb_bn_plugin.training.compat.base import KerasFlavour
from tb_bn_plugin.training.compat.keras3 import KERAS3
from tb_bn_plugin.training.compat.tf_keras import TF_KERAS

# Tried in order; the last one is the default.
FLAVOURS: tuple[KerasFlavour, ...] = (TF_KERAS, KERAS3)


def flavour_of(obj: Any) -> KerasFlavour:
    """The adapter for a Keras model or layer: tf-keras for tf-keras objects, else Keras 3."""
    for flavour in FLAVOURS[:-1]:
        if flavour.owns(obj):
            return flavour
    return FLAVOURS[-1]
