"""Keras 3 on JAX: the ``HostKerasFlavour`` of ``keras.layers.BatchNormalization`` there.

JAX's train step is jitted and stateless: ``train_step(state, data)`` gets
every variable's value in ``state`` and returns the new ones, and while it is
traced the layer's ``_moments`` sees tracers (inside ``jax.value_and_grad``,
so they cannot be returned from it). Keras writes the state back to the
model's variables only at epoch ends (``jax_state_sync``); in between it is
``model._jax_state`` and the variables hold no values.

Capture in ``fit``: two compiled train steps, chosen on the host per step
(``_FitSteps``, put in ``model.train_function`` for the fit). Steps whose
state will not be logged run Keras' own train function, unmodified: no host
callback, nothing added. The steps ``DueSteps`` names run an instrumented
copy of ``train_step`` (jitted once per model, kept for its later fits)
whose layer wrappers call ``jax.debug.callback`` unconditionally with the
mean and variance the layer normalised with and the optimizer's step count
(a tracer of the same trace), whatever the train step does afterwards (a
custom step that drops the moving statistics' updates included). The
callbacks reach the current fit's records through one ``_Sink`` per layer,
so a compiled step outlives the fit that traced it. The model computes
exactly what it computed before: the moments are returned unchanged and the
callbacks' outputs feed nothing. The gap's first training batch is taken on
the host, from the data iterator, as the step draws it: no callback either.

With ``steps_per_execution`` > 1 (Keras runs several steps per call of its
train function: the host cannot pick a function per step) or a
``keras.distribution`` set (Keras compiles its step with the state's
shardings), the fallback is one train function made per fit around a
hooked ``train_step`` whose wrappers put each callback inside a ``lax.cond``
on ``DueSteps.test(step + 1)`` (the host is still called only in logged
steps; every step pays for a scalar predicate and a not-taken branch per
layer).

A custom loop (``BatchNormLogger``: ``DueSteps()``, no step hook) jits its own
stateless step, whose step count the wrapper cannot see: its moments are sent
without one and the record reads the logger's clock. A step jitted with
``jax.jit`` sends them in every call. A step the logger jits
(``BatchNormLogger.jit``: ``LoggedStep``) is compiled twice like ``fit``'s,
plain (the wrappers traced silent) and instrumented, and the host runs the
instrumented one only for the steps the logger will log.
Precise statistics run eager inference calls after Keras' ``jax_state_sync``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import itertools
import operator
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin.training.compat.base import DueSteps, HostRecord, InstalledCapture
from tb_bn_plugin.training.compat.keras3_host import Keras3Host, iterations_index


@dataclasses.dataclass(frozen=True)
class _Traced:
    """The instrumented train step being traced: its optimizer step count (a tracer) and, in
    the ``steps_per_execution`` fallback, the steps whose statistics go to the host (None:
    every traced call sends)."""

    step: Any  # None: a custom loop's step (the record reads the logger's clock)
    gate: Optional[DueSteps]
    sends: bool = True  # False: a custom loop's plain step, traced without the capture


# A ``LoggedStep``'s plain compilation: the wrappers add nothing to it.
_PLAIN = _Traced(step=None, gate=None, sends=False)

_TRACED: contextvars.ContextVar[Optional[_Traced]] = contextvars.ContextVar(
    "tb_bn_traced_step", default=None
)


class _Sink:
    """Where one layer's host callbacks go: the current capture's record (None: dropped).

    A compiled step holds the sink, not the record, so the step traced in one
    ``fit`` serves the captures of the model's later fits.
    """

    def __init__(self) -> None:
        self.record: Optional[HostRecord] = None

    def receive(self, call: Optional[int], mean, variance, count, masked, step=None) -> None:
        record = self.record
        if record is not None:
            step = None if step is None else int(step)
            record(mean, variance, float(count), bool(masked), step, call)


# One sink per layer, for the layer's lifetime.
_SINKS: weakref.WeakKeyDictionary[Any, _Sink] = weakref.WeakKeyDictionary()

# The model instance's attribute holding its ``_FitSteps``.
_FIT_STEPS = "_tb_bn_jax_fit_steps"


class _FitSteps:
    """``model.train_function`` during a ``fit`` with the callback: per step, Keras' own train
    function or the instrumented step, chosen on the host.

    Kept on the model instance (an attribute Keras does not track) with the
    instrumented steps compiled so far, one per set of captured layers, so a
    later ``fit`` traces nothing again. ``bare`` is Keras' train function they
    belong to: a new one (after ``compile``) drops them.

    Per fit: ``due`` and ``layers`` (the step hook's), ``deliver`` (the
    first-batch hook's, until it got its batch), ``done`` (the steps done, counted
    on the host: the step count the optimizer will have), and ``gated``, the
    train function of the ``steps_per_execution`` fallback (None: choose per step).
    """

    def __init__(self, model: Any, bare: Any) -> None:
        self.model = model
        self.bare = bare
        self._instrumented: dict[tuple[int, ...], Callable[[Any, Any], Any]] = {}
        self.due: Optional[DueSteps] = None
        self.layers: tuple[Any, ...] = ()
        self.deliver: Optional[Callable[[Any, Any, Any], None]] = None
        self.done = 0
        self.gated: Optional[Callable[[Any, Any], Any]] = None

    def __deepcopy__(self, memo: dict) -> None:
        # A copied model compiles its own steps (``_fit_steps`` makes them anew).
        return None

    def __call__(self, state: Any, iterator: Any) -> Any:
        if self.deliver is not None:
            data = next(iterator)
            deliver, self.deliver = self.deliver, None
            deliver(*_host_batch(data))
            iterator = itertools.chain([data], iterator)
        if self.gated is not None:
            return self.gated(state, iterator)
        due = self.due
        if due is not None and (due.always or due.test(self.done + 1, operator.or_)):
            outputs = self.instrumented(state, next(iterator))
        else:
            outputs = self.bare(state, iterator)
        self.done += 1
        return outputs

    def instrumented(self, state: Any, data: Any) -> Any:
        key = tuple(id(layer) for layer in self.layers)
        step = self._instrumented.get(key)
        if step is None:
            step = self._instrumented[key] = self._make_instrumented()
        return step(state, data)

    def _make_instrumented(self) -> Callable[[Any, Any], Any]:
        """``model.train_step`` traced with the step count published to the layer wrappers
        (every wrapped layer sends), compiled as Keras compiles its own."""
        model = self.model
        train_step = _published(model, model.train_step, None)
        if model.run_eagerly or not model.jit_compile:
            return train_step
        import jax

        return jax.jit(train_step, donate_argnums=0)


def _published(model: Any, train_step: Callable, gate: Optional[DueSteps]) -> Callable:
    """``train_step`` with the step count in its ``state`` published to the layer wrappers
    while it is traced."""
    index = iterations_index(model.optimizer)
    return _traced_as(train_step, lambda state, data: _Traced(state[2][index], gate))


class LoggedStep:
    """A custom loop's step function as ``BatchNormLogger.jit`` compiles it: ``jax.jit`` twice,
    plain and instrumented, and per call the instrumented one only when ``due()`` (asked on
    the host before the step runs) says the state after it will be logged.

    Each compilation is traced once per argument shapes, as ``jax.jit`` traces; the
    instrumented one at the first logged step. ``instrumented_last``: whether the latest call
    ran the instrumented one (its statistics reach the host).
    """

    def __init__(
        self, function: Callable, jit_kwargs: dict[str, Any], due: Callable[[], bool]
    ) -> None:
        import jax

        self._plain = jax.jit(_traced_as(function, lambda *_, **__: _PLAIN), **jit_kwargs)
        self._instrumented = jax.jit(
            _traced_as(function, lambda *_, **__: _Traced(step=None, gate=None)), **jit_kwargs
        )
        self._due = due
        self.instrumented_last = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.instrumented_last = self._due()
        step = self._instrumented if self.instrumented_last else self._plain
        return step(*args, **kwargs)


def _traced_as(function: Callable, traced: Callable[..., _Traced]) -> Callable:
    """``function`` with ``traced(*args, **kwargs)`` (a new ``_Traced`` per trace: the wrappers
    number a layer's calls per trace) published to the layer wrappers while it is traced
    (``functools.wraps``: ``jax.jit``'s ``static_argnames`` see its signature)."""

    @functools.wraps(function)
    def published(*args: Any, **kwargs: Any) -> Any:
        token = _TRACED.set(traced(*args, **kwargs))
        try:
            return function(*args, **kwargs)
        finally:
            _TRACED.reset(token)

    return published


def _host_batch(data: Any) -> list[Any]:
    """``(x, y, sample_weight)`` of one element the train step gets, as numpy copies."""
    import keras

    return [
        None if value is None else keras.tree.map_structure(np.array, value)
        for value in keras.utils.unpack_x_y_sample_weight(data)
    ]


def _fit_steps(model: Any) -> _FitSteps:
    """The model's ``_FitSteps``, made (or made anew, when Keras made a new train function
    since) around Keras' current train function."""
    steps = model.__dict__.get(_FIT_STEPS)
    current = model.train_function
    if current is None:
        model.make_train_function()
        current = model.train_function
    if steps is None or (current is not steps and current is not steps.bare):
        steps = _FitSteps(model, current)
        # object.__setattr__: Keras' __setattr__ would track the attribute (and save it).
        object.__setattr__(model, _FIT_STEPS, steps)
    return steps


class Keras3Jax(Keras3Host):
    """``HostKerasFlavour`` for Keras 3 models on the JAX backend."""

    backend = "jax"
    compiler = "jax.jit"
    stateless_steps = True

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
    def install_step_hook(model: Any, due: DueSteps, layers: Sequence[Any]) -> InstalledCapture:
        """The steps ``due`` names run the instrumented step, tracing ``layers``' wrappers
        (``use_instrumented_train_function`` puts the chooser in place)."""
        steps = _fit_steps(model)
        steps.due, steps.layers = due, tuple(layers)

        def undo() -> None:
            steps.due, steps.layers = None, ()

        return InstalledCapture(model, None, undo=undo)

    @staticmethod
    def install_first_batch_hook(model: Any, first_step: int, deliver: Any) -> InstalledCapture:
        """The next batch the train function draws (the step at ``first_step``: installed
        before the fit's first step) goes to ``deliver`` as numpy copies, on the host."""
        steps = _fit_steps(model)
        steps.deliver = deliver

        def undo() -> None:
            steps.deliver = None

        return InstalledCapture(model, None, undo=undo)

    def use_instrumented_train_function(self, model: Any) -> None:
        """The chooser becomes ``model.train_function``, its step count the optimizer's; with
        ``steps_per_execution`` > 1 or a distribution, around a train function made now from
        the gated ``train_step`` (the fallback)."""
        from keras import distribution

        steps = _fit_steps(model)
        steps.done = self.steps_done(model)
        steps.gated = None
        if model.steps_per_execution > 1 or distribution.distribution() is not None:
            gate = steps.due if steps.due is not None and not steps.due.always else None
            object.__setattr__(model, "train_step", _published(model, model.train_step, gate))
            try:
                model.make_train_function(force=True)  # binds self.train_step now
            finally:
                model.__dict__.pop("train_step", None)
            steps.gated = model.train_function
        model.train_function = steps

    @staticmethod
    def restore_train_function(model: Any) -> None:
        """Keras' own train function again, compiled as it was (the instrumented steps stay
        with the model for its next fit with the callback)."""
        steps = model.__dict__.get(_FIT_STEPS)
        if steps is not None and model.train_function is steps:
            model.train_function = steps.bare
            steps.gated = None

    @staticmethod
    def install_host_capture(layer: Any, record: HostRecord, due: DueSteps) -> InstalledCapture:
        import jax
        import jax.numpy as jnp

        original = type(layer)._moments.__get__(layer)
        channels = int(np.prod(layer.moving_mean.shape))
        sink = _SINKS.setdefault(layer, _Sink())
        sink.record = record

        # Calls of the layer traced so far in the instrumented step being traced (``[0]``):
        # host callbacks are unordered, so each carries its call number, fixed when traced. A
        # custom loop's step is not instrumented: its calls are numbered as they arrive (None).
        traced = [None, 0]

        def _moments(inputs, mask):
            mean, variance = original(inputs, mask)
            tracing = _TRACED.get()
            if tracing is None and due.every is not None:
                return mean, variance  # fit's capture outside its instrumented step
            if tracing is not None and not tracing.sends:
                return mean, variance  # a custom loop's plain step
            call = None
            if tracing is not None:
                if traced[0] is not tracing:
                    traced[:] = [tracing, 0]
                call = traced[1]
                traced[1] += 1
            if mask is None:
                count = jnp.float32(inputs.size / channels)
            else:
                count = jnp.sum(jnp.asarray(mask, jnp.float32))
            # A custom loop's step is sent without a step count: the record reads its clock.
            args = (mean, variance, count, mask is not None)
            args += () if tracing is None or tracing.step is None else (tracing.step,)

            def send():
                jax.debug.callback(functools.partial(sink.receive, call), *args)

            if tracing is None or tracing.gate is None:
                send()
            else:
                jax.lax.cond(
                    tracing.gate.test(tracing.step + 1, jnp.logical_or), send, lambda: None
                )
            return mean, variance

        object.__setattr__(layer, "_moments", _moments)

        def undo() -> None:
            if sink.record is record:
                sink.record = None

        return InstalledCapture(layer, "_moments", undo=undo)

    @staticmethod
    def compile_logged_step(
        function: Callable, jit_kwargs: dict[str, Any], due: Callable[[], bool]
    ) -> LoggedStep:
        """A custom loop's step function compiled for ``BatchNormLogger.jit`` (``LoggedStep``)."""
        return LoggedStep(function, jit_kwargs, due)

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
    def probe_function(function: Callable) -> Callable:
        """Compiled once per probe (per shapes of its arguments), as Keras compiles its steps."""
        import jax

        return jax.jit(function)

    @staticmethod
    def sync_variables(model: Any) -> None:
        """Keras' own sync for callbacks: the variables take the state's arrays (the next step
        gathers the same values back)."""
        model.jax_state_sync()


KERAS3_JAX = Keras3Jax()
