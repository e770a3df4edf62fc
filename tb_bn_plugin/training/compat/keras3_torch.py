"""Keras 3 on PyTorch: the ``HostKerasFlavour`` of ``keras.layers.BatchNormalization`` there.

The torch train step runs eagerly and assigns the variables in place, so the
capture wrapper on the layer instance's ``_moments`` hands the detached mean
and variance the layer normalised with to the ``HostRecord`` in every
training step (a reference, no copy to the host; ``due`` is not needed), and
variables are read directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tb_bn_plugin.training.compat.base import DueSteps, HostRecord, InstalledCapture
from tb_bn_plugin.training.compat.keras3_host import Keras3Host


class Keras3Torch(Keras3Host):
    """``HostKerasFlavour`` for Keras 3 models on the PyTorch backend."""

    backend = "torch"
    compiler = "torch.compile"
    stateless_steps = False

    @staticmethod
    def batch_moments(layer: Any, inputs: Any, mask: Any) -> tuple[Any, Any]:
        import torch

        inputs = inputs.to(torch.promote_types(inputs.dtype, torch.float32))
        mean, variance = type(layer)._moments(layer, inputs, mask)
        return mean.float().reshape(-1), variance.float().reshape(-1)

    # -- HostKerasFlavour ---------------------------------------------------------

    @staticmethod
    def install_step_hook(model: Any, due: DueSteps, layers: Any) -> None:
        """The eager step hands every call's statistics over by reference: nothing to hook."""
        return None

    def install_first_batch_hook(
        self, model: Any, first_step: int, deliver: Any
    ) -> InstalledCapture:
        import keras

        original = model.train_step
        delivered = []

        def train_step(data):
            if not delivered and self.steps_done(model) == first_step:
                delivered.append(True)
                batch = keras.utils.unpack_x_y_sample_weight(data)
                deliver(*(None if v is None else keras.ops.convert_to_numpy(v) for v in batch))
            return original(data)

        object.__setattr__(model, "train_step", train_step)
        return InstalledCapture(model, "train_step")

    @staticmethod
    def install_host_capture(layer: Any, record: HostRecord, due: DueSteps) -> InstalledCapture:
        original = type(layer)._moments.__get__(layer)
        channels = int(np.prod(layer.moving_mean.shape))

        def _moments(inputs, mask):
            mean, variance = original(inputs, mask)
            if mask is None:
                count = inputs.numel() / channels
            else:
                count = float(mask.float().sum())
            record(mean.detach(), variance.detach(), count, mask is not None, None, None)
            return mean, variance

        object.__setattr__(layer, "_moments", _moments)
        return InstalledCapture(layer, "_moments")

    @staticmethod
    def read_values(model: Any, variables: Sequence[Any], state: Any = None) -> list[np.ndarray]:
        """The variables themselves: a PyTorch loop assigns them in place (``state`` unused)."""
        return [v.value.detach().cpu().numpy() for v in variables]

    @staticmethod
    def settle() -> None:
        """Eager steps: every record has happened."""

    @staticmethod
    def probe_function(function: Callable) -> Callable:
        """Run without autograd's graph: nothing the probe computes is differentiated."""
        import torch

        return torch.no_grad()(function)

    def inference_call(self, model: Any, x: Any) -> Any:
        """Without autograd's graph: nothing here is differentiated."""
        import torch

        with torch.no_grad():
            return model(x, training=False)


KERAS3_TORCH = Keras3Torch()
