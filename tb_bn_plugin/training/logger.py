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

On JAX the batch statistics reach the host by a ``jax.debug.callback`` in every
traced training step (the logger cannot see which steps it will log, unlike
``BatchNormCallback`` in ``fit``, which sends only those), and ``log()`` waits
for the previous step's callbacks before it reads the clock.

Under ``tf.distribute`` it behaves like the callback (README, "tf.distribute"):
only the chief of a multi-worker cluster writes to ``log_dir``, and every
worker must call ``log()`` at the same steps (a snapshot gathers the other
workers' per-replica statistics).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
        if not on_tensorflow:
            # Steps done before the step being recorded: from the optimizer, or log() calls.
            self._logged_calls = 0
            clock = self._optimizer_steps if optimizer is not None else self._calls_before
            self._session.start_capture(refs, clock, model, DueSteps())
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

    def _calls_before(self) -> int:
        return self._logged_calls

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
        if not self._flavour.uses_tensorflow:
            # JAX: the step's host callbacks read the clock as it was before this call.
            capture.settle()
            capture.state = self._owned_values(state)
        steps_done = self._steps_done()
        if step is None:
            step = steps_done
        step = int(step)
        wrote = False
        if step > self._session.last_logged and (
            force_snapshot or step % self.log_every_n_steps == 0
        ):
            self._session.log_step(steps_done, step, force_snapshot)
            wrote = True
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
