"""``BatchNormLogger``: log BatchNorm internals from a custom training loop.

For loops written by hand (``tf.GradientTape``, JAX's ``stateless_call``, PyTorch's
``backward``) instead of ``model.fit``. The same
capture and the same summaries as ``BatchNormCallback`` (both drive a
``session.LoggingSession``), driven by explicit ``log(step)`` calls::

    logger = BatchNormLogger(model, "logs", log_every_n_steps=10, optimizer=opt)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))

    for x, y in data:
        train_step(x, y)
        logger.log()          # or logger.log(step)
    logger.close()            # or use ``with BatchNormLogger(...) as logger:``

Create the logger BEFORE the first call of your ``tf.function`` train step:
the capture wrappers are installed at construction and only functions traced
afterwards see them (a step traced earlier runs, but logs no batch
statistics; call ``train_step = tf.function(...)`` again or build the logger
first). The model and its BatchNormalization layers must be built (call the
model once on data for subclassed models).

Clock ("did the layer train at this step?"): with ``optimizer``, its
``iterations``: a layer counts as trained at a logged step when it
normalised with batch statistics in the step that brought ``iterations`` to
its current value, exactly like the callback. Without an optimizer, an
internal counter advanced by every ``log()`` call: a layer counts as trained
when it normalised with batch statistics since the previous ``log()`` call,
so call ``log()`` once per training step.

Keras 3 on JAX and PyTorch (no TensorFlow needed). Create the logger before
the train step is first traced (JAX) or run. A PyTorch loop assigns the
variables in place, so ``log()`` reads them as on TensorFlow. A JAX loop is
stateless (``stateless_call``, ``optimizer.stateless_apply``) and leaves the
model's variables as they were: pass its state after the step, the values in
the order of ``model.trainable_variables``, ``model.non_trainable_variables``
and, with ``optimizer``, ``optimizer.variables``::

    loss, state = train_step(state, x, y)   # state = (trainable, non_trainable, optimizer)
    logger.log(state=state)

On JAX the batch statistics reach the host by a ``jax.debug.callback``. In a
step compiled with ``jax.jit`` it runs in every step (the logger cannot see
which steps it will log) and ``log()`` waits for it after every step. Compile
the step with the logger instead, ``train_step = logger.jit(step_function)``
(``jax.jit``'s keyword arguments pass through), and, as in ``fit``, only the
steps it will log send their statistics: it compiles the step twice, plain
and instrumented, and counts the steps on the host (one per call, from the
optimizer's ``iterations`` when given) to run the instrumented one exactly
before each ``log()`` that writes at the cadence. A ``log()`` that would write
after a plain step (``force_snapshot``, or a ``step`` numbering that jumped)
is skipped with a warning: that step's batch statistics never left the
compiled step, and logging the layers as not trained would be wrong. Call
``capture_next_step()`` before a step you will log off the cadence::

    train_step = logger.jit(step_function, donate_argnums=0)
    for i, (x, y) in enumerate(data):
        if i == len(data) - 1:
            logger.capture_next_step()
        state = train_step(state, x, y)
        logger.log(state=state, force_snapshot=i == len(data) - 1)

Under ``tf.distribute`` it behaves like the callback (README, "tf.distribute"):
only the chief of a multi-worker cluster writes to ``log_dir``, and every
worker must call ``log()`` at the same steps (a snapshot gathers the other
workers' per-replica statistics).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Optional

from tb_bn_plugin import records
from tb_bn_plugin.training.capture import require_built
from tb_bn_plugin.training.compat import flavour_of
from tb_bn_plugin.training.compat.base import DueSteps
from tb_bn_plugin.training.lazy_tf import tf
from tb_bn_plugin.training.session import (
    DEFAULT_CHANNEL_DTYPE,
    DEFAULT_MAX_BYTES_PER_LOG,
    DEFAULT_RUN_NAME,
    LoggingSession,
)
from tb_bn_plugin.training.step_functions import StepFunctionsProbe


class BatchNormLogger:
    """Logs every BatchNormalization layer's internals from a custom training loop.

    Args:
      model: a built Keras 3 model.
      log_dir: directory for event files; summaries go to ``log_dir/<run_name>``.
      log_every_n_steps: ``log(step)`` writes when ``step`` is a multiple of it.
      layers, max_bytes_per_log, channel_dtype, run_name: as for ``BatchNormCallback``.
      optimizer: optional; its ``iterations`` is the clock (module docstring).
    """

    def __init__(
        self,
        model: Any,
        log_dir: str,
        log_every_n_steps: int = 1,
        layers: Optional[Sequence[str]] = None,
        max_bytes_per_log: int = DEFAULT_MAX_BYTES_PER_LOG,
        channel_dtype: str = DEFAULT_CHANNEL_DTYPE,
        run_name: str = DEFAULT_RUN_NAME,
        optimizer: Any = None,
    ) -> None:
        records.check_logging_options(log_every_n_steps, channel_dtype, max_bytes_per_log)
        self.model = model
        self.log_every_n_steps = log_every_n_steps
        self.run_dir = os.path.join(os.fspath(log_dir), run_name)
        self.optimizer = optimizer
        self._flavour = flavour_of(model)
        on_tensorflow = self._flavour.uses_tensorflow
        strategy = None
        if on_tensorflow:
            strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
        self._session = LoggingSession(
            self.run_dir, strategy, layers, channel_dtype, max_bytes_per_log
        )
        refs = self._session.select_layers(model)
        require_built(refs, "creating the BatchNormLogger")
        if not refs:
            raise ValueError(
                f"BatchNormLogger: model {model.name!r} has no BatchNormalization layer to log"
            )
        self._counter: Any = None
        self._state_steps: Optional[int] = None  # host backends (below)
        self._step_functions: Optional[StepFunctionsProbe] = None  # host backends
        if not on_tensorflow:
            self._logged_calls = 0
            # ``jit``'s step (None: the loop compiles its own), the steps it ran (counted on the
            # host), the loop's step numbering minus that count, and the steps done before the
            # latest instrumented one.
            self._jitted: Any = None
            self._steps_run = 0
            self._step_offset = 0
            self._steps_before_instrumented = 0
            self._warned_uncaptured = False
            self._capture_next = False
            # ``_state_steps``: a stateless loop's optimizer step count as of the latest log()
            # (or now), read there: by the time a later step's host callback asks, that
            # state's arrays may be donated to the running step (reading them would wait for
            # it: a deadlock).
            capture = self._session.start_capture(
                refs, self._steps_before_recorded, model, DueSteps()
            )
            if self._flavour.stateless_steps and optimizer is not None:
                self._state_steps = self._optimizer_steps()
            # The graph view's step functions, measured around the first logged step.
            loop_step = "compiled by the loop" if self._flavour.stateless_steps else "eager"
            self._step_functions = StepFunctionsProbe(
                model, refs, capture, self._functions(f"custom loop step ({loop_step})")
            )
            self._measure_step_functions(self._steps_before_recorded(), wrote=False)
            return
        if optimizer is not None:
            clock = optimizer.iterations
        else:
            with strategy.scope():
                self._counter = tf.Variable(
                    tf.constant(0, tf.int64), trainable=False, name="bn_logger_clock"
                )
            clock = self._counter
        # The writer opens before the wrappers go in, so an unwritable log_dir leaves the model
        # as it was. On a non-chief worker: the same work into a temporary directory.
        self._session.start_capture(refs, clock)

    @property
    def channel_dtype(self) -> Any:
        return self._session.channel_dtype

    def _optimizer_steps(self) -> int:
        if self._flavour.uses_tensorflow:
            return int(self.optimizer.iterations.numpy())
        # On JAX from the latest state a stateless loop passed to log().
        state = self._session.capture.state
        return int(self._flavour.read_values(self.model, [self.optimizer.iterations], state)[0])

    def _owned_values(self, state: Optional[Sequence[Any]]) -> Optional[list[tuple[Any, Any]]]:
        """A loop's ``(trainable, non_trainable[, optimizer])`` values as ``(variables, values)``
        pairs (``HostKerasFlavour.read_values``)."""
        if state is None:
            return None
        if not 2 <= len(state) <= 3:
            raise ValueError(
                "state must be the (trainable_variables, non_trainable_variables"
                f"[, optimizer_variables]) values of the loop, got {len(state)} parts"
            )
        owners = [self.model.trainable_variables, self.model.non_trainable_variables]
        if self.optimizer is not None:  # without it, the optimizer's part is not read
            owners.append(self.optimizer.variables)
        return list(zip(owners, state))

    def _steps_before_recorded(self) -> int:
        """The record's clock (host backends): the steps done before the step whose statistics
        arrive: ``jit``'s count, the optimizer's (JAX: as of the latest ``log(state=...)``;
        PyTorch: its variable now) or ``log()`` calls."""
        if self._jitted is not None:
            return self._steps_before_instrumented
        if self._state_steps is not None:
            return self._state_steps
        if self.optimizer is not None:
            return self._optimizer_steps()
        return self._logged_calls

    def jit(self, step_function: Callable, **jit_kwargs: Any) -> Callable:
        """JAX: ``jax.jit(step_function, **jit_kwargs)`` whose statistics reach the host only in
        the steps this logger logs (module docstring). Pass the undecorated function; call the
        result once per training step and ``log(state=...)`` after each call."""
        compile_logged_step = getattr(self._flavour, "compile_logged_step", None)
        if compile_logged_step is None:
            raise ValueError(
                "BatchNormLogger.jit compiles a step function for Keras 3 on the JAX backend; "
                "on this model's backend run your training step as usual and call log() after "
                "each step"
            )
        if hasattr(step_function, "lower"):
            raise TypeError(
                "BatchNormLogger.jit: pass the step function itself, not a jax.jit-compiled one "
                "(jit's keyword arguments go to BatchNormLogger.jit)"
            )
        if self._jitted is not None:
            raise ValueError("BatchNormLogger.jit: this logger already compiled a step function")
        if self._session.capture is None:
            raise RuntimeError("BatchNormLogger is closed")
        self._steps_run = self._steps_before_recorded()  # steps done so far (not jitted yet)
        self._jitted = compile_logged_step(step_function, jit_kwargs, self._next_step_logged)
        name = getattr(step_function, "__qualname__", type(step_function).__name__)
        self._step_functions.functions = self._functions(f"BatchNormLogger.jit({name})")
        return self._jitted

    def _functions(self, train_function: str) -> tuple[str, str]:
        """The graph view's (training, inference) functions: the loop's step and what the
        backend runs for ``model.predict`` (a BN layer normalises the same way in any
        ``training=False`` call)."""
        return train_function, self._flavour.step_functions(self.model)[1]

    def _measure_step_functions(
        self, steps_done: int, step: Optional[int] = None, wrote: bool = False
    ) -> None:
        """The graph view's payload, once: the moving statistics read before the first step
        that will be logged (the state now, after ``steps_done`` steps, numbered ``step``),
        compared at its log (``wrote``)."""
        probe = self._step_functions
        if probe is None or probe.written:
            return
        if wrote:
            probe.after_step(steps_done, self._session.writer)
        if self._probe_reads_before(steps_done if step is None else step):
            probe.before_step(steps_done)

    def _probe_reads_before(self, step: int) -> bool:
        """Whether the step after ``step`` is the graph view's measurement still to make: at the
        cadence, and no payload written yet."""
        probe = self._step_functions
        return not probe.written and (step + 1) % self.log_every_n_steps == 0

    def _writes_at(self, step: int, force_snapshot: bool) -> bool:
        """Whether ``log(step, force_snapshot)`` writes: at the cadence, or forced, after the
        last step logged."""
        return step > self._session.last_logged and (
            force_snapshot or step % self.log_every_n_steps == 0
        )

    def _next_step_logged(self) -> bool:
        """Asked by ``jit``'s step before each step: whether the state after it will be logged
        (at the cadence, numbered as the loop's latest ``log(step)`` numbered it)."""
        if self._session.capture is None:
            return False
        before = self._steps_run
        self._steps_run += 1
        step = self._steps_run + self._step_offset
        forced, self._capture_next = self._capture_next, False
        if forced or self._writes_at(step, force_snapshot=False):
            self._steps_before_instrumented = before
            return True
        return False

    def capture_next_step(self) -> None:
        """``jit``'s next step sends its statistics even off the cadence, for a
        ``log(force_snapshot=True)`` after it (e.g. the loop's last step)."""
        self._capture_next = True

    def _log_jitted(self, step: Optional[int], force_snapshot: bool, state: Any) -> bool:
        """``log`` after a step of ``jit``'s: the clock is the host's count of steps run, and
        only a step run instrumented is logged."""
        self._logged_calls += 1
        steps_done = self._steps_run
        if step is None:
            step = steps_done + self._step_offset
        step = int(step)
        self._step_offset = step - steps_done
        capture = self._session.capture
        if not self._writes_at(step, force_snapshot):
            if self._probe_reads_before(step):
                capture.state = self._owned_values(state)  # what the probe reads
                self._measure_step_functions(steps_done, step, wrote=False)
            return False
        if not self._jitted.instrumented_last:
            if not self._warned_uncaptured:
                self._warned_uncaptured = True
                warnings.warn(
                    f"BatchNormLogger: not logging step {step}: its training step ran without "
                    "the capture (BatchNormLogger.jit captures only at multiples of "
                    f"log_every_n_steps={self.log_every_n_steps} of its own step count), so "
                    "its batch statistics never reached the host. Log at the cadence with one "
                    "log() per step, call capture_next_step() before a step logged off the "
                    "cadence, or compile the step with jax.jit (every step then sends its "
                    "statistics).",
                    stacklevel=3,
                )
            return False
        capture.settle()
        capture.state = self._owned_values(state)
        self._session.log_step(steps_done, step, force_snapshot)
        self._measure_step_functions(steps_done, step, wrote=True)
        if self.optimizer is not None:
            # The optimizer's count is the clock: follow it should a call not advance it by one.
            self._steps_run = self._optimizer_steps()
        return True

    def _steps_done(self) -> int:
        if self.optimizer is not None:
            return self._optimizer_steps()
        if self._counter is None:
            return self._logged_calls + 1
        return int(self._counter.numpy()) + 1

    def log(
        self,
        step: Optional[int] = None,
        force_snapshot: bool = False,
        state: Optional[Sequence[Any]] = None,
    ) -> bool:
        """Log the state after the latest training step at ``step``, if at the cadence.

        ``step`` defaults to the optimizer's ``iterations`` (or the number of
        ``log()`` calls so far, this one included). Returns whether it wrote.
        ``state``: on JAX, a stateless loop's ``(trainable_variables,
        non_trainable_variables[, optimizer_variables])`` values after the step (what
        ``stateless_call`` and ``optimizer.stateless_apply`` return), read instead of the
        model's variables, which such a loop leaves as they were (module docstring).
        """
        capture = self._session.capture
        if capture is None:
            raise RuntimeError("BatchNormLogger is closed")
        if not self._flavour.uses_tensorflow and self._jitted is not None:
            return self._log_jitted(step, force_snapshot, state)
        if not self._flavour.uses_tensorflow:
            # JAX: the step's host callbacks read the clock as it was before this call.
            capture.settle()
            capture.state = self._owned_values(state)
        steps_done = self._steps_done()
        if self._state_steps is not None:
            self._state_steps = steps_done
        if step is None:
            step = steps_done
        step = int(step)
        wrote = False
        if self._writes_at(step, force_snapshot):
            self._session.log_step(steps_done, step, force_snapshot)
            wrote = True
        self._measure_step_functions(steps_done, step, wrote)
        if self._counter is not None:
            self._counter.assign_add(1)
        elif not self._flavour.uses_tensorflow:
            self._logged_calls += 1
        return wrote

    def flush(self) -> None:
        if self._session.writer is not None:
            self._session.writer.flush()

    def close(self) -> None:
        """Remove the wrappers (functions traced from now on are plain) and close the event file."""
        self._session.close()

    def __enter__(self) -> BatchNormLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
