"""``BatchNormLogger``: log BatchNorm internals from a custom training loop.

For loops written with ``tf.GradientTape`` instead of ``model.fit``. The same
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
        if not flavour_of(model).uses_tensorflow:
            raise NotImplementedError(
                "BatchNormLogger supports TensorFlow models (Keras 3 on the tensorflow backend, "
                "tf-keras) only; on JAX and PyTorch use BatchNormCallback with model.fit"
            )
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
        if optimizer is not None:
            self._counter = None
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

    def _steps_done(self) -> int:
        if self._counter is None:
            return int(self.optimizer.iterations.numpy())
        return int(self._counter.numpy()) + 1

    def log(self, step: Optional[int] = None, force_snapshot: bool = False) -> bool:
        """Log the state after the latest training step at ``step``, if at the cadence.

        ``step`` defaults to the optimizer's ``iterations`` (or the number of
        ``log()`` calls so far, this one included). Returns whether it wrote.
        """
        if self._session.capture is None:
            raise RuntimeError("BatchNormLogger is closed")
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
