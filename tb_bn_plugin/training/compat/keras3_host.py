"""What Keras 3 on JAX and on PyTorch share: ``Keras3Host``, the base of both host flavours.

Both are ``Keras3`` (same layers, same compiled loss and metrics, same
``StatelessScope``) without TensorFlow: no ``tf.distribute`` strategy, the
step count read through the flavour's ``read_values``, no capture variables
(``install_capture`` refuses: ``install_host_capture`` captures), and
precise statistics measured by eager inference calls (``inference_call``).
A subclass names its ``backend`` and implements the rest of
``base.HostKerasFlavour``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tb_bn_plugin.training.compat.base import InstalledCapture
from tb_bn_plugin.training.compat.keras3 import Keras3


class Keras3Host(Keras3):
    """The part of ``base.HostKerasFlavour`` that does not depend on the backend."""

    uses_tensorflow = False
    backend: str  # ``keras.backend.backend()`` of the models the subclass serves
    stateless_steps: bool  # ``base.HostKerasFlavour.stateless_steps``
    compiler: str  # what Keras compiles a step with when ``jit_compile`` is on

    def step_functions(self, model: Any) -> tuple[str, str]:
        """``train_step`` and ``predict_step`` as Keras runs them: each compiled by itself
        (``jax.jit(Functional.train_step)``), or eagerly (``run_eagerly``, or ``jit_compile``
        off: PyTorch's default)."""
        name = type(model).__name__
        if model.run_eagerly or not model.jit_compile:
            return f"{name}.train_step (eager)", f"{name}.predict_step (eager)"
        return f"{self.compiler}({name}.train_step)", f"{self.compiler}({name}.predict_step)"

    def owns(self, obj: Any) -> bool:
        import keras

        return Keras3.owns(obj) and keras.backend.backend() == self.backend

    @staticmethod
    def explicit_strategy(model: Any) -> None:
        return None

    def steps_done(self, model: Any) -> int:
        return int(self.read_values(model, [model.optimizer.iterations])[0])

    def install_capture(self, layer: Any, record: Any, due: Any) -> InstalledCapture:
        raise NotImplementedError(
            f"Keras 3 on {self.backend} captures with install_host_capture (no TensorFlow)"
        )

    def inference_call(self, model: Any, x: Any) -> Any:
        """``model(x, training=False)`` run eagerly on the model's current variables (a capture
        wrapper inside may convert what it sees to numpy); changes no variable."""
        self.sync_variables(model)
        return model(x, training=False)

    @staticmethod
    def probe_function(function: Callable) -> Callable:
        """``function`` (the gap probe's passes, pure in their arguments) as this backend runs it
        best: JAX compiles it, PyTorch runs it without autograd (both override)."""
        return function

    def sync_variables(self, model: Any) -> None:
        """The variables are always up to date (PyTorch); JAX overrides."""

    @staticmethod
    def use_instrumented_train_function(model: Any) -> None:
        """Keras remakes its train function around the hooked ``train_step`` (PyTorch; JAX
        overrides)."""
        model.make_train_function(force=True)

    @staticmethod
    def restore_train_function(model: Any) -> None:
        """The function made around the hooks goes; Keras makes its own at the next ``fit``."""
        model.train_function = None


def iterations_index(optimizer: Any) -> int:
    """Where ``optimizer.iterations`` stands in ``optimizer.variables`` (and so in the optimizer
    part of a stateless train step's state)."""
    return next(i for i, v in enumerate(optimizer.variables) if v is optimizer.iterations)
