"""Tapping BatchNormalization layers while the gap probe's forward passes are traced.

Owns ``BatchNormTap``: it wraps the ``call`` of every BN layer instance, only
while the probe functions are traced, and routes each call according to the
active ``ProbePass``: which mode each layer runs in, and what the tapped
layers record (``LayerOutputs``) for the gap probe to compare.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from tb_bn_plugin.training.capture import BatchNormRef
from tb_bn_plugin.training.lazy_tf import tf

# Kinds of probe passes.
INFERENCE = "inference"  # every BN layer in inference mode
TRAIN = "train"  # every BN layer in training mode
ATTRIBUTION = "attribution"  # training mode, except one tapped layer in inference mode


@dataclasses.dataclass
class LayerOutputs:
    """What one tapped layer produced at its first call in a pass (tensors of the traced graph).

    ``output``: its output in the pass's mode. In ``train`` passes also
    ``inference_output`` (its inference-mode output on the same input: the
    local gap) and ``moments`` (the (C,) mean and biased variance of its input).
    """

    output: Any
    inference_output: Any = None
    moments: Optional[tuple[tf.Tensor, tf.Tensor]] = None


class ProbePass:
    """One traced forward pass: its kind and, per tapped layer's slot, its ``LayerOutputs``.

    ``index`` (``attribution`` passes): the slot of the tapped layer that runs
    in inference mode, a scalar int32 tensor (traced on TensorFlow and JAX).
    """

    def __init__(self, kind: str, index: Optional[tf.Tensor] = None) -> None:
        self.kind = kind
        self.index = index
        self.outputs: dict[int, LayerOutputs] = {}


class BatchNormTap:
    """Wraps the ``call`` of every BN layer instance (only while probe functions are traced).

    ``all_refs``: every BN layer of the model (all switch modes); ``tapped``:
    those whose outputs are recorded, slot ``i`` being ``tapped[i]``.
    """

    def __init__(self, all_refs: Sequence[BatchNormRef], tapped: Sequence[BatchNormRef]) -> None:
        slots = {id(r.layer): i for i, r in enumerate(tapped)}
        self._layers = [(r, slots.get(id(r.layer))) for r in all_refs]
        self.current: Optional[ProbePass] = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        for ref, slot in self._layers:
            object.__setattr__(ref.layer, "call", self._wrap(ref, slot))
        try:
            yield
        finally:
            for ref, _ in self._layers:
                ref.layer.__dict__.pop("call", None)

    @contextlib.contextmanager
    def active(self, probe_pass: ProbePass) -> Iterator[ProbePass]:
        self.current = probe_pass
        try:
            yield probe_pass
        finally:
            self.current = None

    def _wrap(self, ref: BatchNormRef, slot: Optional[int]):
        layer = ref.layer
        flavour = ref.flavour
        original = type(layer).call.__get__(layer)
        tap = self

        def call(inputs, training=None, mask=None):
            p = tap.current
            kwargs = {} if mask is None else {"mask": mask}
            if p is None:
                return original(inputs, training=training, **kwargs)
            first = slot is not None and slot not in p.outputs
            if p.kind == INFERENCE:
                out = original(inputs, training=False, **kwargs)
                if first:
                    p.outputs[slot] = LayerOutputs(out)
                return out
            wants_inference = slot is not None and (first or p.kind == ATTRIBUTION)
            # The inference-mode output first: the training-mode call assigns the
            # moving statistics (inside the stateless scope), later reads would see that.
            out_inference = original(inputs, training=False, **kwargs) if wants_inference else None
            out_train = original(inputs, training=True, **kwargs)
            if p.kind == TRAIN:
                if first:
                    p.outputs[slot] = LayerOutputs(
                        out_train, out_inference, flavour.batch_moments(layer, inputs, mask)
                    )
                return out_train
            if slot is None:
                return out_train
            if flavour.uses_tensorflow:
                return tf.where(tf.equal(p.index, slot), out_inference, out_train)
            import keras  # Keras 3 on JAX or PyTorch

            return keras.ops.where(keras.ops.equal(p.index, slot), out_inference, out_train)

        return call
