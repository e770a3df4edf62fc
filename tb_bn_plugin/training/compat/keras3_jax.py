"""Keras 3 on JAX: the ``HostKerasFlavour`` of ``keras.layers.BatchNormalization`` there.

JAX's train step is jitted and stateless: ``train_step(state, data)`` gets
every variable's value in ``state`` and returns the new ones, and while it is
traced the layer's ``_moments`` sees tracers (inside ``jax.value_and_grad``,
so they cannot be returned from it). Keras writes the state back to the
model's variables only at epoch ends (``jax_state_sync``); in between it is
``model._jax_state`` and the variables hold no values.

Capture: a step hook on the model instance's ``train_step`` publishes the
optimizer's step count (a tracer of the same trace) to the layer wrappers;
each wrapper puts ``jax.debug.callback(record, ...)`` inside a ``lax.cond`` on
``DueSteps.test(step + 1)``, so the host is called only in the steps whose
state will be logged, with the mean and variance the layer normalised with,
whatever the train step does afterwards (a custom step that drops the moving
statistics' updates included). Other steps run a scalar predicate and a
not-taken branch. The model computes exactly what it computed before: the
moments are returned unchanged, and the callback's outputs feed nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin.training.compat.base import DueSteps, HostRecord, InstalledCapture
from tb_bn_plugin.training.compat.keras3 import Keras3

# The optimizer step count traced with the train step that is being traced, if any.
_TRACED_STEP: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "tb_bn_traced_step", default=None
)


class Keras3Jax(Keras3):
    """``HostKerasFlavour`` for Keras 3 models on the JAX backend."""

    uses_tensorflow = False
    backend = "jax"

    @staticmethod
    def owns(obj: Any) -> bool:
        return Keras3.owns(obj) and _backend() == "jax"

    @staticmethod
    def explicit_strategy(model: Any) -> None:
        return None

    @staticmethod
    def steps_done(model: Any) -> int:
        return int(Keras3Jax.read_values(model, [model.optimizer.iterations])[0])

    def install_capture(self, layer: Any, record: Any, due: Any) -> InstalledCapture:
        raise NotImplementedError("Keras 3 on JAX captures with install_host_capture")

    @staticmethod
    def batch_moments(layer: Any, inputs: Any, mask: Any) -> tuple[Any, Any]:
        import jax.numpy as jnp

        inputs = jnp.asarray(inputs, jnp.result_type(inputs.dtype, jnp.float32))
        mean, variance = type(layer)._moments(layer, inputs, mask)
        return (
            jnp.reshape(mean.astype(jnp.float32), [-1]),
            jnp.reshape(variance.astype(jnp.float32), [-1]),
        )

    # -- HostKerasFlavour ---------------------------------------------------------

    @staticmethod
    def install_step_hook(model: Any) -> InstalledCapture:
        """Wrap ``train_step`` on the instance: the step count in ``state`` is published to the
        layer wrappers while it is traced (Keras jits ``self.train_step``)."""
        optimizer = model.optimizer
        index = next(i for i, v in enumerate(optimizer.variables) if v is optimizer.iterations)
        original = model.train_step  # the class's, or a first-batch hook

        def train_step(state, data):
            token = _TRACED_STEP.set(state[2][index])
            try:
                return original(state, data)
            finally:
                _TRACED_STEP.reset(token)

        object.__setattr__(model, "train_step", train_step)
        return InstalledCapture(model, "train_step")

    @staticmethod
    def install_first_batch_hook(model: Any, first_step: int, deliver: Any) -> InstalledCapture:
        """A ``jax.debug.callback`` inside a ``lax.cond`` on the traced step count: only the step
        at ``first_step`` sends its batch to the host."""
        import jax
        import keras

        optimizer = model.optimizer
        index = next(i for i, v in enumerate(optimizer.variables) if v is optimizer.iterations)
        original = model.train_step

        def train_step(state, data):
            batch = keras.utils.unpack_x_y_sample_weight(data)
            present = [i for i, v in enumerate(batch) if v is not None]

            def on_host(*arrays):
                values = [None, None, None]
                for i, array in zip(present, arrays):
                    values[i] = keras.tree.map_structure(np.asarray, array)
                deliver(*values)

            jax.lax.cond(
                state[2][index] == first_step,
                lambda: jax.debug.callback(on_host, *(batch[i] for i in present)),
                lambda: None,
            )
            return original(state, data)

        object.__setattr__(model, "train_step", train_step)
        return InstalledCapture(model, "train_step")

    @staticmethod
    def install_host_capture(layer: Any, record: HostRecord, due: DueSteps) -> InstalledCapture:
        import jax
        import jax.numpy as jnp

        original = type(layer)._moments.__get__(layer)
        channels = int(np.prod(layer.moving_mean.shape))

        def on_host(step, mean, variance, count, masked):
            record(mean, variance, float(count), bool(masked), int(step))

        def _moments(inputs, mask):
            mean, variance = original(inputs, mask)
            step = _TRACED_STEP.get()
            if step is None:  # not inside fit's train step
                return mean, variance
            if mask is None:
                count = jnp.float32(inputs.size / channels)
            else:
                count = jnp.sum(jnp.asarray(mask, jnp.float32))
            args = (step, mean, variance, count, mask is not None)

            def send():
                jax.debug.callback(on_host, *args)

            if due.always:
                send()
            else:
                jax.lax.cond(due.test(step + 1, jnp.logical_or), send, lambda: None)
            return mean, variance

        object.__setattr__(layer, "_moments", _moments)
        return InstalledCapture(layer, "_moments")

    @staticmethod
    def step_functions(model: Any) -> tuple[str, str]:
        """Keras jits ``train_step`` and ``predict_step`` separately (unless run eagerly)."""
        name = type(model).__name__
        if model.run_eagerly or not model.jit_compile:
            return f"{name}.train_step (eager)", f"{name}.predict_step (eager)"
        return f"jax.jit({name}.train_step)", f"jax.jit({name}.predict_step)"

    @staticmethod
    def read_values(model: Any, variables: Sequence[Any]) -> list[np.ndarray]:
        """From ``model._jax_state`` while Keras holds the state there (inside an epoch), else
        from the variables."""
        state = getattr(model, "_jax_state", None)
        if not state or getattr(model, "_jax_state_synced", True):
            return [np.asarray(v.value) for v in variables]
        where: dict[int, Any] = {}
        for key, owned in (
            ("trainable_variables", model.trainable_variables),
            ("non_trainable_variables", model.non_trainable_variables),
            ("optimizer_variables", model.optimizer.variables),
        ):
            values = state.get(key) or ()
            for ref, value in zip(owned, values):
                where[id(ref)] = value
        return [
            np.asarray(where[id(v)]) if id(v) in where else np.asarray(v.value) for v in variables
        ]

    @staticmethod
    def settle() -> None:
        import jax

        jax.effects_barrier()

    @staticmethod
    def sync_variables(model: Any) -> None:
        """Keras' own sync for callbacks: the variables take the state's arrays (the next step
        gathers the same values back)."""
        model.jax_state_sync()


def _backend() -> Optional[str]:
    import keras

    return keras.backend.backend()


KERAS3_JAX = Keras3Jax()
