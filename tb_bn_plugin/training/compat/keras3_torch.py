"""Keras 3 on PyTorch: the ``HostKerasFlavour`` of ``keras.layers.BatchNormalization`` there.

The torch train step runs eagerly and assigns the variables in place, so the
capture wrapper on the layer instance's ``_moments`` hands the detached mean
and variance the layer normalised with to the ``HostRecord`` in every
training step (a reference, no copy to the host; ``due`` is not needed), and
variables are read directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tb_bn_plugin.training.compat.base import DueSteps, HostRecord, InstalledCapture
from tb_bn_plugin.training.compat.keras3 import Keras3


class Keras3Torch(Keras3):
    """``HostKerasFlavour`` for Keras 3 models on the PyTorch backend."""

    uses_tensorflow = False
    backend = "torch"

    @staticmethod
    def owns(obj: Any) -> bool:
        import keras

        return Keras3.owns(obj) and keras.backend.backend() == "torch"

    @staticmethod
    def explicit_strategy(model: Any) -> None:
        return None

    @staticmethod
    def steps_done(model: Any) -> int:
        return int(Keras3Torch.read_values(model, [model.optimizer.iterations])[0])

    def install_capture(self, layer: Any, record: Any, due: Any) -> InstalledCapture:
        raise NotImplementedError("Keras 3 on PyTorch captures with install_host_capture")

    @staticmethod
    def batch_moments(layer: Any, inputs: Any, mask: Any) -> tuple[Any, Any]:
        import torch

        inputs = inputs.to(torch.promote_types(inputs.dtype, torch.float32))
        mean, variance = type(layer)._moments(layer, inputs, mask)
        return mean.float().reshape(-1), variance.float().reshape(-1)

    # -- HostKerasFlavour ---------------------------------------------------------

    @staticmethod
    def install_step_hook(model: Any) -> None:
        return None

    @staticmethod
    def install_first_batch_hook(model: Any, first_step: int, deliver: Any) -> InstalledCapture:
        import keras

        original = model.train_step
        delivered = []

        def train_step(data):
            if not delivered and Keras3Torch.steps_done(model) == first_step:
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
            record(mean.detach(), variance.detach(), count, mask is not None, None)
            return mean, variance

        object.__setattr__(layer, "_moments", _moments)
        return InstalledCapture(layer, "_moments")

    @staticmethod
    def step_functions(model: Any) -> tuple[str, str]:
        """Keras runs ``train_step`` and ``predict_step`` eagerly, or each under ``torch.compile``
        with ``jit_compile=True``."""
        name = type(model).__name__
        if model.run_eagerly or not model.jit_compile:
            return f"{name}.train_step (eager)", f"{name}.predict_step (eager)"
        return f"torch.compile({name}.train_step)", f"torch.compile({name}.predict_step)"

    @staticmethod
    def read_values(model: Any, variables: Sequence[Any]) -> list[np.ndarray]:
        return [v.value.detach().cpu().numpy() for v in variables]

    @staticmethod
    def settle() -> None:
        """Eager steps: every record has happened."""

    @staticmethod
    def sync_variables(model: Any) -> None:
        """The variables are always up to date."""


KERAS3_TORCH = Keras3Torch()
