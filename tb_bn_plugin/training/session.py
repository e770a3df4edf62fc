"""One run's BatchNorm logging, shared by ``BatchNormCallback`` and ``BatchNormLogger``.

Owns ``LoggingSession`` (which layers are logged, their ``StatsCapture``, the
run's ``SummaryWriter`` and the ``SnapshotCadence``; it writes one logged
step) and the logging defaults both front ends use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import records
from tb_bn_plugin.summary import SummaryWriter
from tb_bn_plugin.training.capture import BatchNormRef, StatsCapture, find_batchnorm_layers
from tb_bn_plugin.training.compat.base import DueSteps
from tb_bn_plugin.training.host_capture import HostStatsCapture
from tb_bn_plugin.training.lazy_tf import tf

DEFAULT_MAX_BYTES_PER_LOG = 50_000
DEFAULT_CHANNEL_DTYPE = "float32"
DEFAULT_RUN_NAME = "train"


class LoggingSession:
    """Logs the BN layers of one model into one run directory.

    Args:
      run_dir: where the run's event files go (``SummaryWriter.for_run``).
      strategy: the ``tf.distribute`` strategy the model trains under; None for a model on a
        backend other than TensorFlow (then nothing here imports TensorFlow).
      layers: optional glob patterns over layer paths (``select_layers``).
      channel_dtype: storage dtype of per-channel snapshots.
      max_bytes_per_log: average budget in bytes per logged step (sizes the cadence).

    The writer is opened by ``open_writer`` or, at the latest, by
    ``start_capture``; ``last_logged``/``last_snapshot`` are the steps of the
    latest logged step and per-channel snapshot (-1: none yet).
    """

    def __init__(
        self,
        run_dir: str,
        strategy: Optional[tf.distribute.Strategy],
        layers: Optional[Sequence[str]] = None,
        channel_dtype: str = DEFAULT_CHANNEL_DTYPE,
        max_bytes_per_log: int = DEFAULT_MAX_BYTES_PER_LOG,
    ) -> None:
        self.run_dir = run_dir
        self.strategy = strategy
        self.layer_patterns = tuple(layers) if layers is not None else None
        self.channel_dtype = np.dtype(channel_dtype)
        self.max_bytes_per_log = max_bytes_per_log
        self.writer: Optional[SummaryWriter] = None
        self.capture: Optional[StatsCapture | HostStatsCapture] = None
        self.cadence = records.SnapshotCadence(1)
        self.last_logged = -1
        self.last_snapshot = -1

    def select_layers(self, model: Any) -> list[BatchNormRef]:
        """The model's BatchNormalization layers that match the patterns (built or not)."""
        return find_batchnorm_layers(model, self.layer_patterns)

    def open_writer(self) -> SummaryWriter:
        """The run's writer, opened on the first call (``PermissionError`` for an unwritable
        ``run_dir``; a non-chief worker's writes go to a temporary directory)."""
        if self.writer is None:
            self.writer = SummaryWriter.for_run(self.run_dir, self.strategy)
        return self.writer

    def start_capture(
        self,
        refs: Sequence[BatchNormRef],
        clock: Any,
        model: Any = None,
        due: DueSteps = DueSteps(),
        capture: Optional[StatsCapture] = None,
    ) -> StatsCapture | HostStatsCapture:
        """Capture ``refs`` in every training step traced (or run) from now on.

        ``clock``: a variable holding the number of training steps done (on
        TensorFlow). Without TensorFlow (``strategy`` None): ``model``, ``due``,
        the steps that will be logged (a compiled JAX step sends only those to
        the host), and ``clock`` a function returning the steps done, or None for
        the model's optimizer's count. The layers
        are checked (``UnsupportedLayerError``) and the writer opened before the
        wrappers go in, so a failure leaves the model as it was. The snapshot
        cadence is sized for these layers. ``capture``: a ``StatsCapture`` of
        ``refs`` and ``clock`` to use again (an earlier fit's, whose traced
        functions hold its variables) instead of a new one.
        """
        if self.strategy is None:
            capture = HostStatsCapture(refs, model, due, clock)
        elif capture is None:
            capture = StatsCapture(refs, clock, self.strategy)
        self.open_writer()
        capture.install()
        self.capture = capture
        self.cadence = records.SnapshotCadence(
            records.snapshot_interval(
                capture.configs, self.channel_dtype, self.max_bytes_per_log, capture.replicas
            )
        )
        return capture

    def log_step(self, steps_done: int, step: int, force_snapshot: bool = False) -> bool:
        """Write the state after the step that brought the clock to ``steps_done``, at ``step``.

        Every layer's summary record and, when the cadence says so (or
        ``force_snapshot``), its per-channel snapshot. Returns whether it did.
        The step is in the event file when this returns: a process killed
        afterwards (out of memory, pre-empted, SIGKILL) keeps it.
        """
        full = self.cadence.next(force_snapshot)
        self.writer.layer_step(self.capture.snapshot(steps_done), step, full, self.channel_dtype)
        # Without the flush the writer's queue (up to 100 events or 30 s) dies with the process.
        self.writer.flush()
        self.last_logged = step
        if full:
            self.last_snapshot = step
        return full

    def stop_capture(self) -> None:
        """Remove the wrappers: functions traced from now on are plain."""
        if self.capture is not None:
            self.capture.uninstall()
            self.capture = None

    def close(self) -> None:
        """Stop capturing and close the writer."""
        self.stop_capture()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
