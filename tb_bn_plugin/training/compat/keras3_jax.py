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

A custom loop (``BatchNormLogger``: ``DueSteps()``, no step hook) jits its own
stateless step, whose step count the wrapper cannot see: every training call
sends its moments without one and the record reads the logger's clock.
Precise statistics run eager inference calls after Keras' ``jax_state_sync``.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin.training.compat.base import DueSteps, HostRecord, InstalledCapture
from tb_bn_plugin.training.compat.keras3_host import Keras3Host, iterations_index

# The optimizer step count traced with the train step that is being traced, if any.
_TRACED_STEP: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "tb_bn_traced_step", default=None
)


class Keras3Jax(Keras3Host):
    """``HostKerasFlavour`` for Keras 3 models on the JAX backend."""

    backend = "jax"
    compiler = "jax.jit"

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
        index = iterations_index(model.optimizer)
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

        index = iterations_index(model.optimizer)
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

        # Calls of the layer traced so far in fit's step whose count tracer is ``[0]``: host
        # callbacks are unordered, so each carries its call number, fixed when traced. A custom
        # loop's step has no count tracer: its calls are numbered as they arrive (``None``).
        traced = [None, 0]

        def on_host(call, mean, variance, count, masked, step=None):
            step = None if step is None else int(step)
            record(mean, variance, float(count), bool(masked), step, call)

        def _moments(inputs, mask):
            mean, variance = original(inputs, mask)
            step = _TRACED_STEP.get()
            if step is None and due.every is not None:  # fit's capture, outside its train step
                return mean, variance
            call = None
            if step is not None:
                if traced[0] is not step:
                    traced[:] = [step, 0]
                call = traced[1]
                traced[1] += 1
            if mask is None:
                count = jnp.float32(inputs.size / channels)
            else:
                count = jnp.sum(jnp.asarray(mask, jnp.float32))
            # A custom loop's step (no step hook) is sent without a step count: the record
            # reads its clock.
            args = (mean, variance, count, mask is not None) + (() if step is None else (step,))

            def send():
                jax.debug.callback(functools.partial(on_host, call), *args)

            if due.always:
                send()
            else:
                jax.lax.cond(due.test(step + 1, jnp.logical_or), send, lambda: None)
            return mean, variance

        object.__setattr__(layer, "_moments", _moments)
        return InstalledCapture(layer, "_moments")

    @staticmethod
    def read_values(
        model: Any, variables: Sequence[Any], state: Optional[Sequence[Any]] = None
    ) -> list[np.ndarray]:
        """From ``state`` when given, else from ``model._jax_state`` while Keras holds the state
        there (inside an epoch of ``fit``), else from the variables."""
        if state is not None:
            owned_values = state
        else:
            held = getattr(model, "_jax_state", None)
            if not held or getattr(model, "_jax_state_synced", True):
                return [np.asarray(v.value) for v in variables]
            owned_values = (
                (model.trainable_variables, held.get("trainable_variables") or ()),
                (model.non_trainable_variables, held.get("non_trainable_variables") or ()),
                (model.optimizer.variables, held.get("optimizer_variables") or ()),
            )
        where = {
            id(ref): value for owned, values in owned_values for ref, value in zip(owned, values)
        }
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


KERAS3_JAX = Keras3Jax()
