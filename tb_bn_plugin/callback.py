"""``BatchNormCallback``: log BatchNorm internals during ``model.fit``.

Framework glue around ``capture`` (what the layers computed), ``records``
(what a logged step stores) and ``summary`` (how it is written).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import tempfile
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import tensorflow as tf

from tb_bn_plugin import records
from tb_bn_plugin.capture import BatchNormRef, StatsCapture, find_batchnorm_layers
from tb_bn_plugin.summary import SummaryWriter

keras = tf.keras
logger = logging.getLogger("tb_bn_plugin")

DEFAULT_LOG_EVERY_N_STEPS = 50
DEFAULT_MAX_BYTES_PER_LOG = 50_000


class NoBatchNormWarning(UserWarning):
    """The model has no BatchNormalization layer to log."""


class BatchNormCallback(keras.callbacks.Callback):
    """Logs every BatchNormalization layer's internals as TensorBoard summaries.

    At every ``log_every_n_steps``-th training step and at the end of every
    epoch it records, per layer and channel, the batch mean and (biased)
    variance the layer normalised with in that step, the moving mean and
    variance after it, and gamma/beta; per layer, whether it trained in that
    step, how many values each channel's statistics came from, and its
    momentum. Batch statistics are captured inside the real training step:
    no extra forward pass, no change to what the model computes. A subclassed
    model that is first built by its first training step is captured from
    its second step on.

    Args:
      log_dir: directory for event files; summaries go to ``log_dir/<run_name>``
        like ``keras.callbacks.TensorBoard``.
      log_every_n_steps: logging cadence in training steps (the end of each
        epoch is always logged).
      layers: optional glob patterns over layer paths (``"encoder/*"``);
        only matching BatchNormalization layers are logged.
      max_bytes_per_log: average budget in bytes per logged step. Summary
        records (statistics across channels) are written at every logged step;
        full per-channel snapshots at every logged step when they fit the
        budget, otherwise at every k-th logged step and at each epoch end.
      channel_dtype: storage dtype of per-channel snapshots, ``"float32"`` or
        ``"float16"`` (half the bytes, about 3 significant digits).
      run_name: subdirectory of ``log_dir`` that holds this run's events.
    """

    def __init__(
        self,
        log_dir: str,
        log_every_n_steps: int = DEFAULT_LOG_EVERY_N_STEPS,
        layers: Optional[Sequence[str]] = None,
        max_bytes_per_log: int = DEFAULT_MAX_BYTES_PER_LOG,
        channel_dtype: str = "float32",
        run_name: str = "train",
    ) -> None:
        super().__init__()
        if not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be a positive integer, got {log_every_n_steps!r}")
        if channel_dtype not in ("float32", "float16"):
            raise ValueError(f"channel_dtype must be 'float32' or 'float16', got {channel_dtype!r}")
        if max_bytes_per_log < 1:
            raise ValueError(f"max_bytes_per_log must be positive, got {max_bytes_per_log!r}")
        self.log_dir = os.fspath(log_dir)
        self.log_every_n_steps = log_every_n_steps
        self.layer_patterns = tuple(layers) if layers is not None else None
        self.max_bytes_per_log = max_bytes_per_log
        self.channel_dtype = np.dtype(channel_dtype)
        self.run_name = run_name
        # Logging work happens in on_train_batch_begin (state after the previous
        # step), so Keras may dispatch batch-end hooks asynchronously.
        self.async_safe = True
        self._capture: Optional[StatsCapture] = None
        self._writer: Optional[SummaryWriter] = None
        self._awaiting_build = False
        self._snapshot_interval = 1
        self._logs_written = 0
        self._last_logged = -1
        self._epoch_base = 0

    @property
    def run_dir(self) -> str:
        return os.path.join(self.log_dir, self.run_name)

    # -- Keras hooks --------------------------------------------------------------

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        _check_writable(self.run_dir)
        self._writer = SummaryWriter(self.run_dir)
        # Steps done before this fit were logged (or not) by whoever ran them.
        self._last_logged = self._steps_done()
        if not self.model.built:
            # Subclassed models are built by the first traced training step:
            # their layers are discovered right after it.
            self._awaiting_build = True
            return
        self._discover()

    def _discover(self) -> None:
        self._awaiting_build = False
        refs = self._selected_layers()
        if not refs:
            warnings.warn(
                f"BatchNormCallback: model {self.model.name!r} has no BatchNormalization layer"
                + (f" matching {list(self.layer_patterns)}" if self.layer_patterns else "")
                + "; nothing will be logged.",
                NoBatchNormWarning,
                stacklevel=3,
            )
            return
        unused = [r.path for r in refs if not r.built]
        if unused:
            warnings.warn(
                f"BatchNormCallback: BatchNormalization layers {unused} are not built (never called "
                "by the model) and are not logged.",
                stacklevel=3,
            )
        refs = [r for r in refs if r.built]
        if refs:
            self._start_capture(refs)

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self._capture is not None or self._awaiting_build:
            self._epoch_base = self._steps_done()

    def on_train_batch_begin(self, batch: int, logs: Optional[dict] = None) -> None:
        if self._awaiting_build and self.model.built:
            self._discover()
        if self._capture is None:
            return
        steps_done = self._epoch_base + batch
        if steps_done > self._last_logged and steps_done > 0 and steps_done % self.log_every_n_steps == 0:
            self._log(steps_done, force_snapshot=False)

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self._capture is None:
            return
        steps_done = self._steps_done()
        if steps_done > self._last_logged:
            self._log(steps_done, force_snapshot=True)
        self._writer.flush()

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        if self._capture is not None:
            steps_done = self._steps_done()
            if steps_done > self._last_logged:
                self._log(steps_done, force_snapshot=True)
            self._stop_capture()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- internals ----------------------------------------------------------------

    def _selected_layers(self) -> list[BatchNormRef]:
        refs = find_batchnorm_layers(self.model)
        if self.layer_patterns is not None:
            refs = [r for r in refs if any(fnmatch.fnmatchcase(r.path, p) for p in self.layer_patterns)]
        return refs

    def _start_capture(self, refs: list[BatchNormRef]) -> None:
        self._capture = StatsCapture(refs, self.model.optimizer.iterations, self.model.distribute_strategy)
        self._capture.install()
        self._snapshot_interval = records.snapshot_interval(
            self._capture.configs, self.channel_dtype, self.max_bytes_per_log
        )
        logger.info(
            "BatchNormCallback: logging %d BatchNormalization layers to %s "
            "(per-channel snapshot every %d logged steps)",
            len(refs), self.run_dir, self._snapshot_interval,
        )
        # The train function was made before on_train_begin but is traced on its
        # first call; remaking it guarantees the trace sees the wrappers even
        # when this model was fit before.
        self.model.make_train_function(force=True)

    def _stop_capture(self) -> None:
        self._capture.uninstall()
        self._capture = None
        # Drop the traced function holding the wrappers; Keras remakes it on demand.
        self.model.train_function = None

    def _steps_done(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _log(self, steps_done: int, force_snapshot: bool) -> None:
        snapshot = force_snapshot or self._logs_written % self._snapshot_interval == 0
        for snap in self._capture.snapshot(steps_done):
            info = {
                "training": float(snap.training),
                "trainable": float(snap.trainable),
                "count": snap.count,
                "momentum": snap.momentum,
                "full": float(snapshot),
            }
            self._writer.layer_summary(snap.config, steps_done, records.summary_record(snap.config, snap.values, info))
            if snapshot:
                self._writer.layer_channels(
                    snap.config, steps_done, records.channel_record(snap.config, snap.values, self.channel_dtype)
                )
        self._logs_written += 1
        self._last_logged = steps_done


def _check_writable(directory: str) -> None:
    """Fail before training starts when ``directory`` cannot hold event files."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".tb_bn_write_check"):
            pass
    except OSError as err:
        raise PermissionError(
            f"BatchNormCallback cannot write event files to {directory!r}: {err.strerror or err}. "
            "Pass a writable log_dir."
        ) from err
