"""``BatchNormCallback``: log BatchNorm internals during ``model.fit``.

Owns the callback: when to log (the Keras hooks and cadences), the run
graph (on TensorFlow) or the step-functions description (``step_functions``,
on JAX and PyTorch), and the gap probe's life cycle. What a logged step captures and
writes is ``session.LoggingSession``'s; the gap passes are ``gap_probe``'s.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata, records
from tb_bn_plugin.training import graph_trace
from tb_bn_plugin.training.capture import BatchNormRef, StatsCapture, find_batchnorm_layers
from tb_bn_plugin.training.compat import flavour_of, keras_runs_on_tensorflow
from tb_bn_plugin.training.compat.base import DueSteps
from tb_bn_plugin.training.compat.bound_keras import Callback
from tb_bn_plugin.training.gap_probe import SCOPES, GapProbe, GapProbeWarning, GapResult
from tb_bn_plugin.training.host_gap import HostFirstBatchStash, HostGapProbe, probe_from_data
from tb_bn_plugin.training.model_cache import FitCache, fit_cache
from tb_bn_plugin.training.probe_batch import (
    DEFAULT_PROBE_SIZE,
    FirstBatchStash,
    ProbeBatch,
    probe_batch_from_data,
)
from tb_bn_plugin.training.session import (
    DEFAULT_CHANNEL_DTYPE,
    DEFAULT_MAX_BYTES_PER_LOG,
    DEFAULT_RUN_NAME,
    LoggingSession,
)
from tb_bn_plugin.training.step_functions import StepFunctionsProbe

logger = logging.getLogger("tb_bn_plugin")

DEFAULT_LOG_EVERY_N_STEPS = 50


class NoBatchNormWarning(UserWarning):
    """The model has no BatchNormalization layer to log."""


class BatchNormCallback(Callback):
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

    It also measures the train/inference gap on a fixed *probe batch* (by
    default at each epoch end): the compiled loss and metrics of the probe
    batch in training mode vs. inference mode and, per layer, how much its
    output differs between the modes (see ``gap_every_n_epochs``). These
    extra forward passes change no variable: moving statistics, RNG seed
    state, metric trackers and the captured statistics stay as training left
    them.

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
        budget, otherwise at every k-th logged step and at the end of training.
      channel_dtype: storage dtype of per-channel snapshots, ``"float32"`` or
        ``"float16"`` (half the bytes, about 3 significant digits).
      run_name: subdirectory of ``log_dir`` that holds this run's events.
      gap_every_n_epochs: measure the train/inference gap at the end of every
        n-th epoch (default 1: every epoch); 0 disables epoch-end gaps. Each
        measurement logs, on the probe batch, the compiled loss (without
        regularisation penalties; for multi-output models also each output's
        loss) and the compiled metrics in training and in inference mode, and
        per logged layer the *compound* gap (relative RMS difference of the
        layer's output between a full training-mode and a full inference-mode
        pass), the *local* gap (the difference the layer itself makes when fed
        its training-mode input, batch vs. moving statistics), and the local
        gap derived from statistics alone. Cost: two forward passes of the
        probe batch; the probe functions are traced once per model (later fits
        of the same model reuse them). When any gap cadence is on, the gap is
        also measured once after the model's first training step (in the
        ``fit`` that starts it; not in later fits of a model that has trained):
        its loss, taken before the model has learnt, is the scale the
        ``train-inference-gap`` diagnostic measures gaps against once the loss
        approaches 0.
      gap_every_n_steps: also measure the gap every n training steps (default
        None: only at epoch ends). The gap is neither measured nor the probe
        batch stashed when both cadences are off.
      gap_attribution: False (default) or True or an int k: at the epoch-end
        gap measurement of every (k-th) epoch, also attribute the model-level
        gap to layers: for each logged layer L, one training-mode pass with
        only L in inference mode, ``attribution_L = (loss_L - loss_train) /
        (loss_inference - loss_train)`` (about 1 for the layer that accounts
        for the whole gap, near 0 for one that does not matter). Cost: one
        forward pass per logged layer; never at step-cadence measurements.
      gap_scope: which layers run in training mode in the training-mode
        passes. ``"batchnorm"`` (default): only BatchNormalization layers;
        Dropout and other layers stay in inference mode, so the gap is that of
        BatchNormalization alone and deterministic. ``"model"``: the whole
        model with ``training=True`` as in ``fit`` (dropout included, with the
        same masks in every pass of one measurement; the RNG state never
        advances). tf-keras models support ``"batchnorm"`` only: ``"model"``
        falls back to it with a ``GapProbeWarning``.
      probe_data: the probe batch, ``(x, y)`` or ``(x, y, sample_weight)`` of
        arrays or tensors (at most ``probe_size`` samples of it are used).
        Default: the first ``probe_size`` samples of the first training batch,
        copied inside the first training step (variables of ``probe_size``
        samples are reserved on the device for it). Training-mode passes
        normalise with the statistics of the whole probe batch, so a probe of
        about the training batch size reflects training best. Pass
        ``probe_data`` under a tf.distribute strategy, for non-dense inputs,
        or to measure the gap on held-out data.
      probe_size: the most samples the probe batch holds (default 256).
      write_graph: write the model's training-mode and inference-mode forward
        passes (traced, not run, once per model) as the run graph of every
        ``fit``, for TensorBoard's Graphs tab and the plugin's switch-path view.
        On JAX and PyTorch, where there is no TensorFlow graph: the names of the
        two step functions and, measured on the fit's first logged step, whether
        the train step applies each layer's moving-statistic updates (the
        ``step_functions`` payload), for the same view.

    What the callback traces (the instrumented train function, the snapshot
    and gap-probe functions, the run graph) is kept with the model and reused
    by its later fits with a new callback; after a ``fit`` the model has its
    own train function back, unchanged. Every logged step is written to the
    event file as it is logged (the file is flushed at each log), so a process
    killed in training keeps every step logged before the kill.
    """

    def __init__(
        self,
        log_dir: str,
        log_every_n_steps: int = DEFAULT_LOG_EVERY_N_STEPS,
        layers: Optional[Sequence[str]] = None,
        max_bytes_per_log: int = DEFAULT_MAX_BYTES_PER_LOG,
        channel_dtype: str = DEFAULT_CHANNEL_DTYPE,
        run_name: str = DEFAULT_RUN_NAME,
        gap_every_n_epochs: int = 1,
        gap_every_n_steps: Optional[int] = None,
        gap_attribution: bool | int = False,
        gap_scope: str = "batchnorm",
        probe_data: Any = None,
        probe_size: int = DEFAULT_PROBE_SIZE,
        write_graph: bool = True,
    ) -> None:
        super().__init__()
        records.check_logging_options(log_every_n_steps, channel_dtype, max_bytes_per_log)
        if not isinstance(gap_every_n_epochs, int) or gap_every_n_epochs < 0:
            raise ValueError(
                f"gap_every_n_epochs must be a non-negative integer, got {gap_every_n_epochs!r}"
            )
        if gap_every_n_steps is not None and (
            not isinstance(gap_every_n_steps, int) or gap_every_n_steps < 1
        ):
            raise ValueError(
                f"gap_every_n_steps must be None or a positive integer, got {gap_every_n_steps!r}"
            )
        if not isinstance(gap_attribution, int) or gap_attribution < 0:
            raise ValueError(
                f"gap_attribution must be a bool or a non-negative integer, got {gap_attribution!r}"
            )
        if gap_scope not in SCOPES:
            raise ValueError(f"gap_scope must be one of {SCOPES}, got {gap_scope!r}")
        if not isinstance(probe_size, int) or probe_size < 1:
            raise ValueError(f"probe_size must be a positive integer, got {probe_size!r}")
        self.gap_every_n_epochs = gap_every_n_epochs
        self.gap_every_n_steps = gap_every_n_steps
        self.gap_attribution = int(gap_attribution)
        self.gap_scope = gap_scope
        self.probe_size = probe_size
        # TensorFlow models get a ProbeBatch of tensors, others numpy arrays (host_gap).
        self._probe_batch: Optional[ProbeBatch | tuple] = None
        if probe_data is not None:
            self._probe_batch = (
                probe_batch_from_data(probe_data, probe_size)
                if keras_runs_on_tensorflow()
                else probe_from_data(probe_data, probe_size)
            )
        if self.gap_attribution and not gap_every_n_epochs:
            warnings.warn(
                "BatchNormCallback: gap_attribution is computed at epoch-end gap measurements, "
                "which gap_every_n_epochs=0 disables.",
                GapProbeWarning,
                stacklevel=2,
            )
        self.log_dir = os.fspath(log_dir)
        self.log_every_n_steps = log_every_n_steps
        self.layer_patterns = tuple(layers) if layers is not None else None
        self.max_bytes_per_log = max_bytes_per_log
        self.channel_dtype = np.dtype(channel_dtype)
        self.run_name = run_name
        self.write_graph = write_graph
        # Logging work happens in on_train_batch_begin (state after the previous
        # step), so Keras may dispatch batch-end hooks asynchronously.
        self.async_safe = True
        self._session: Optional[LoggingSession] = None  # one per fit
        self._cache: Optional[FitCache] = None  # the model's, during a fit
        self._awaiting_build = False
        self._epoch_base = 0
        self._stash: Optional[FirstBatchStash | HostFirstBatchStash] = None
        self._gap_probe: Optional[GapProbe | HostGapProbe] = None
        self._step_functions: Optional[StepFunctionsProbe] = None  # one per fit, off TensorFlow
        self._gap_off = False
        self._last_gap_step = -1
        self._first_gap_step = -1

    @property
    def gap_enabled(self) -> bool:
        """Whether any gap cadence is on."""
        return bool(self.gap_every_n_epochs or self.gap_every_n_steps)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.log_dir, self.run_name)

    @property
    def _capture(self) -> Any:
        """The session's ``StatsCapture`` while capturing, else None."""
        return self._session.capture if self._session is not None else None

    # -- Keras hooks --------------------------------------------------------------

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self._cache = fit_cache(self.model)
        self._cache.begin_fit(self.model)
        self._session = LoggingSession(
            self.run_dir,
            self._strategy(),
            self.layer_patterns,
            self.channel_dtype.name,
            self.max_bytes_per_log,
        )
        self._session.open_writer()
        # Steps done before this fit were logged (or not) by whoever ran them.
        self._session.last_logged = self._session.last_snapshot = self._steps_done()
        self._start_gap()
        if not self.model.built:
            # Subclassed models are built by the first traced training step:
            # their layers are discovered right after it.
            self._awaiting_build = True
            return
        self._discover()

    def _discover(self) -> None:
        self._awaiting_build = False
        refs = self._session.select_layers(self.model)
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
                f"BatchNormCallback: BatchNormalization layers {unused} are not built (never "
                "called by the model) and are not logged.",
                stacklevel=3,
            )
        refs = [r for r in refs if r.built]
        if refs:
            if self.write_graph:
                self._write_model_graph()
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
        if (
            steps_done > self._session.last_logged
            and steps_done > 0
            and steps_done % self.log_every_n_steps == 0
        ):
            self._log(steps_done)
        periodic_gap = bool(self.gap_every_n_steps) and steps_done % self.gap_every_n_steps == 0
        if (
            self.gap_enabled
            and steps_done > self._last_gap_step
            and steps_done > 0
            and (periodic_gap or steps_done == self._first_gap_step)
        ):
            self._log_gap(steps_done, attribution=False)
        if self._capture.gated:
            self._capture.capture_next_steps(self._logs_after(steps_done, batch))
        if self._step_functions is not None and self._logs_after(steps_done, batch):
            self._step_functions.before_step(steps_done)

    def _logs_after(self, steps_done: int, batch: int) -> bool:
        """Whether the state after the step about to run (batch ``batch``) will be logged."""
        steps = (self.params or {}).get("steps")
        return steps is None or (steps_done + 1) % self.log_every_n_steps == 0 or batch + 1 >= steps

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self._capture is None:
            return
        steps_done = self._steps_done()
        if steps_done > self._session.last_logged:
            self._log(steps_done)
        if (
            self.gap_every_n_epochs
            and (epoch + 1) % self.gap_every_n_epochs == 0
            and steps_done > self._last_gap_step
        ):
            attribution = bool(self.gap_attribution) and (epoch + 1) % self.gap_attribution == 0
            self._log_gap(steps_done, attribution=attribution)
        self._session.writer.flush()

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        if self._capture is not None:
            steps_done = self._steps_done()
            if steps_done > self._session.last_snapshot:
                # The final state always has per-channel detail.
                self._log(steps_done, force_snapshot=True)
            if getattr(self.model.optimizer, "use_ema", False):
                self._log_ema_weights_gap(steps_done)
        self._stop_gap()
        self._step_functions = None
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._cache is not None:
            # The wrappers are off and the model runs its own train function again: the
            # next fit without the callback neither retraces nor runs the capture.
            if self._on_tensorflow:
                self._cache.restore_train_function(self.model)
            else:
                flavour_of(self.model).restore_train_function(self.model)
            self._cache = None

    # -- internals ----------------------------------------------------------------

    def _strategy(self) -> Any:
        """The model's ``tf.distribute`` strategy; None on a backend other than TensorFlow."""
        return self.model.distribute_strategy if self._on_tensorflow else None

    @property
    def _on_tensorflow(self) -> bool:
        return flavour_of(self.model).uses_tensorflow

    def _start_capture(self, refs: list[BatchNormRef]) -> None:
        if self._on_tensorflow:
            # The capture's variables live in the cached traced functions: reuse them.
            cache = self._cache
            clock = self.model.optimizer.iterations
            if cache.capture is None or [r.layer for r in cache.capture.refs] != [
                r.layer for r in refs
            ]:
                cache.capture = StatsCapture(refs, clock, self.model.distribute_strategy)
                cache.gap_probe = cache.gap_key = None
            self._session.start_capture(refs, clock, capture=cache.capture)
        else:
            # The steps this fit logs the state after (a compiled JAX step sends only their
            # statistics to the host): every log_every_n_steps-th and each epoch's last.
            steps = (self.params or {}).get("steps")
            due = DueSteps(self.log_every_n_steps, self._steps_done(), steps)
            capture = self._session.start_capture(refs, None, self.model, due)
            if self.write_graph:
                self._step_functions = StepFunctionsProbe(self.model, refs, capture)
        logger.info(
            "BatchNormCallback: logging %d BatchNormalization layers to %s "
            "(per-channel snapshot every %d logged steps)",
            len(refs),
            self.run_dir,
            self._session.cadence.interval,
        )
        self._use_instrumented_train_function()

    def _use_instrumented_train_function(self) -> None:
        """The train function Keras made before on_train_begin has no wrappers in it: use the
        one traced with them (made now and kept with the model, or kept from an earlier fit)."""
        if not self._on_tensorflow:
            flavour_of(self.model).use_instrumented_train_function(self.model)
            return
        stash_installed = self._stash is not None and self._stash.unsupported is None
        self._cache.use_train_function(self.model, self._capture, stash_installed)

    def _write_model_graph(self) -> None:
        """Trace the training and inference steps (nothing runs) and write them as the run graph.

        Off TensorFlow there is no graph to trace: ``StepFunctionsProbe`` describes the
        step functions instead, at the fit's first logged step.
        """
        if not self._on_tensorflow:
            return
        if not getattr(self.model, "inputs", None):
            logger.info(
                "BatchNormCallback: %r has no symbolic inputs (subclassed model); no graph is "
                "written. Use tb-bn graph with a saved model to see its switch paths.",
                self.model.name,
            )
            return
        if self._cache.graph is None:
            try:
                # Forward passes only: the BN sites and updates without the gradient
                # ops, which would multiply the graph's bytes in the event file.
                self._cache.graph = graph_trace.trace_model_graph(self.model, train_step=False)
            except Exception as err:  # the graph view is optional; never break training over it
                self._cache.graph = err
        if isinstance(self._cache.graph, Exception):
            err = self._cache.graph
            warnings.warn(
                f"BatchNormCallback: could not trace the model's steps for the graph view "
                f"({type(err).__name__}: {err}); statistics are logged as usual. "
                "Pass write_graph=False to skip this.",
                stacklevel=4,
            )
            return
        self._session.writer.graph(self._cache.graph)

    # -- train/inference gap ---------------------------------------------------------

    def _start_gap(self) -> None:
        self._gap_probe = None
        self._gap_off = not self.gap_enabled
        self._last_gap_step = self._steps_done()
        # One measurement right after the model's first training step: the loss before it
        # has learnt, the scale train-inference-gap compares gaps with once the loss nears 0.
        # A model that has trained before (a later fit, a restored optimizer) has no such
        # loss left to catch: a point after its first step would be one more evaluation
        # (two forward passes) per fit, one step from the previous fit's last.
        self._first_gap_step = 1 if self._last_gap_step == 0 else -1
        if self._gap_off or self._probe_batch is not None:
            return
        if not self._on_tensorflow:
            self._stash = HostFirstBatchStash(self.model, self.probe_size, self._steps_done())
        else:
            # The stash's variables live in the cached train functions: reuse it, restashed.
            cache = self._cache
            if cache.stash is None or cache.stash.probe_size != self.probe_size:
                cache.stash = FirstBatchStash(self.model, self.probe_size)
            self._stash = cache.stash
            self._stash.restash()
        if self._stash.unsupported is not None:
            self._disable_gap(f"{self._stash.unsupported}; pass probe_data to measure the gap")
            return
        self._stash.install()
        self._use_instrumented_train_function()

    def _stop_gap(self) -> None:
        self._gap_probe = None
        if self._stash is not None:
            self._stash.uninstall()
            self._stash = None

    def _disable_gap(self, reason: str) -> None:
        self._gap_off = True
        warnings.warn(
            f"BatchNormCallback: the train/inference gap is not logged: {reason}.",
            GapProbeWarning,
            stacklevel=3,
        )

    def _ensure_gap_probe(self) -> Optional[GapProbe | HostGapProbe]:
        if self._gap_probe is not None or self._gap_off or self._capture is None:
            return self._gap_probe
        batch = self._probe_batch
        if batch is None and self._stash is not None:
            batch = self._stash.probe()
        if batch is None:
            reason = self._stash.unsupported if self._stash is not None else None
            self._disable_gap(
                f"{reason or 'no probe batch was stashed from the training data'}; pass probe_data"
            )
            return None
        all_refs = [r for r in find_batchnorm_layers(self.model) if r.built]
        tapped = [r for r in self._session.select_layers(self.model) if r.built]
        # The probe's traced functions are kept with the model. On TensorFlow they hold the
        # capture's variables; a host probe (compiled on JAX) pauses each fit's capture.
        cache = self._cache
        key = (
            tuple(r.layer for r in all_refs),
            tuple(r.layer for r in tapped),
            self.gap_scope,
            self._capture if self._on_tensorflow else None,
        )
        if cache.gap_key == key and (
            cache.gap_probe.use_probe(batch)
            if self._on_tensorflow
            else cache.gap_probe.use_probe(batch, self._capture)
        ):
            self._gap_probe = cache.gap_probe
            return self._gap_probe
        try:
            probe_class = GapProbe if self._on_tensorflow else HostGapProbe
            self._gap_probe = probe_class(
                self.model, all_refs, tapped, batch, self.gap_scope, self._capture
            )
            cache.gap_probe, cache.gap_key = self._gap_probe, key
        except Exception as err:  # never break training over a diagnostic
            logger.debug("gap probe construction failed", exc_info=True)
            self._disable_gap(
                f"the probe functions could not be built ({type(err).__name__}: {err})"
            )
            return None
        for message in self._gap_probe.warnings:
            warnings.warn(f"BatchNormCallback: {message}.", GapProbeWarning, stacklevel=3)
        return self._gap_probe

    def _log_gap(self, steps_done: int, attribution: bool) -> None:
        probe = self._ensure_gap_probe()
        if probe is None:
            return
        try:
            result = probe.evaluate(attribution=attribution)
        except Exception as err:  # never break training over a diagnostic
            logger.debug("gap evaluation failed", exc_info=True)
            self._gap_probe = None
            self._disable_gap(f"a gap evaluation failed ({type(err).__name__}: {err})")
            return
        self._write_gap(result, steps_done)
        self._last_gap_step = steps_done

    def _log_ema_weights_gap(self, steps_done: int) -> None:
        """The gap of the EMA weights ``fit`` leaves in the model (``use_ema=True``).

        Keras ends ``fit`` with ``optimizer.finalize_variable_values``, before
        ``on_train_end``: the trainable variables now hold the EMA weights while
        the moving statistics are those of the live weights (EMA averages
        trainable variables only). The probe's training-mode pass normalises
        with statistics re-estimated for the EMA weights (the probe's batch
        statistics at every BN layer), its inference-mode pass with the moving
        statistics as they are; neither changes a variable.
        """
        if not self.gap_enabled:
            return
        probe = self._ensure_gap_probe()
        if probe is None:
            return
        try:
            result = probe.evaluate(attribution=False)
        except Exception as err:  # never break training over a diagnostic
            logger.debug("EMA-weights gap evaluation failed", exc_info=True)
            self._disable_gap(f"the EMA-weights gap failed ({type(err).__name__}: {err})")
            return
        self._write_gap(result, steps_done, ema_weights=True)

    def _write_gap(self, result: GapResult, steps_done: int, ema_weights: bool = False) -> None:
        self._session.writer.write(
            metadata.ema_weights_gap_tag() if ema_weights else metadata.gap_tag(),
            result.record(),
            steps_done,
            records.gap_content(
                result.loss_names,
                result.metric_names,
                result.layer_paths,
                result.probe_size,
                result.scope,
                metadata.KIND_EMA_WEIGHTS_GAP if ema_weights else metadata.KIND_GAP,
            ),
        )

    def _steps_done(self) -> int:
        return flavour_of(self.model).steps_done(self.model)

    def _log(self, steps_done: int, force_snapshot: bool = False) -> None:
        """Log the state after the step that brought the optimizer to ``steps_done``."""
        self._session.log_step(steps_done, steps_done, force_snapshot)
        if self._step_functions is not None:
            self._step_functions.after_step(steps_done, self._session.writer)
