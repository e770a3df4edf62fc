"""The train/inference gap on Keras 3 backends other than TensorFlow (JAX, PyTorch).

``HostGapProbe`` measures what ``gap_probe.GapProbe`` measures, with the same
passes, ``layer_tap.BatchNormTap`` routing and ``GapResult``, run eagerly with
``keras.ops`` instead of traced into ``tf.function``s: at most a few passes per
epoch, so tracing would not pay. Every pass runs inside ``keras.StatelessScope``
(moving statistics, seed and metric updates are intercepted), with the tap
installed and the statistics capture paused only for the duration of the
passes. On JAX the model's variables are first brought up to date with the
state Keras holds between epoch-end syncs (``HostKerasFlavour.sync_variables``).
The probe batch is ``probe_data`` (``probe_batch``); sums of squares are taken
in float64 on the host.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.numerics import gap
from tb_bn_plugin.training.capture import BatchNormRef
from tb_bn_plugin.training.compat import flavour_of
from tb_bn_plugin.training.gap_probe import (
    SCOPE_BATCHNORM,
    SCOPE_MODEL,
    SCOPES,
    GapResult,
    compiled_objects,
)
from tb_bn_plugin.training.layer_tap import ATTRIBUTION, INFERENCE, TRAIN, BatchNormTap, ProbePass


class HostGapProbe:
    """``GapProbe``'s interface (``evaluate``, ``warnings``, ``can_attribute``) for a model on a
    ``HostKerasFlavour``. ``probe``: ``(x, y, sample_weight)`` numpy arrays (y, sample_weight may be
    None); ``capture``: the callback's ``HostStatsCapture``, paused during the passes."""

    def __init__(
        self,
        model: Any,
        all_refs: Sequence[BatchNormRef],
        tapped: Sequence[BatchNormRef],
        probe: tuple[Any, Any, Any],
        scope: str = SCOPE_BATCHNORM,
        capture: Any = None,
    ) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.model = model
        self._flavour = flavour_of(model)
        self.warnings: list[str] = []
        self.scope = scope
        self.probe = probe
        self.size = int(len(probe[0]))
        self._tapped = list(tapped)
        self._tap = BatchNormTap(all_refs, tapped)
        self._capture = capture
        self._compile_loss, self._compile_metrics = compiled_objects(
            self._flavour, model, self.warnings
        )
        self.loss_names = ["loss"]
        if self._compile_loss is not None and len(self._compile_loss.metrics) > 1:
            self.loss_names += [m.name for m in self._compile_loss.metrics]
        self.metric_names: list[str] = []

    @property
    def can_attribute(self) -> bool:
        return self._compile_loss is not None and self.probe[1] is not None and bool(self._tapped)

    def evaluate(self, attribution: bool = False) -> GapResult:
        """One gap evaluation at the model's current state; changes no variable."""
        self._flavour.sync_variables(self.model)
        paused = self._capture.paused() if self._capture is not None else contextlib.nullcontext()
        with self._tap.installed(), paused:
            return self._evaluate(attribution)

    def _evaluate(self, attribution: bool) -> GapResult:
        import keras

        x, y, sample_weight = self.probe
        to_numpy = keras.ops.convert_to_numpy
        stats = []
        for ref in self._tapped:
            layer = ref.layer
            ones, zeros = np.ones(ref.channels), np.zeros(ref.channels)
            stats.append(
                {
                    "moving_mean": _flat(layer.moving_mean, to_numpy),
                    "moving_variance": _flat(layer.moving_variance, to_numpy),
                    "gamma": _flat(layer.gamma, to_numpy) if layer.scale else ones,
                    "beta": _flat(layer.beta, to_numpy) if layer.center else zeros,
                }
            )
        inference = ProbePass(INFERENCE)
        with self._tap.active(inference), self._flavour.stateless(self.model):
            y_pred = self.model(x, training=False)
            inference_losses, inference_metrics = self._score(y, y_pred, sample_weight, True)
        train = ProbePass(TRAIN)
        with self._tap.active(train), self._flavour.stateless(self.model):
            y_pred = self.model(x, training=self.scope == SCOPE_MODEL)
            train_losses, train_metrics = self._score(y, y_pred, sample_weight)

        col = metadata.GAP_LAYER_FIELDS.index
        values = np.full((len(self._tapped), len(metadata.GAP_LAYER_FIELDS)), np.nan)
        for i, (ref, layer_stats) in enumerate(zip(self._tapped, stats)):
            t, f = train.outputs.get(i), inference.outputs.get(i)
            if not t:
                continue
            # The training-mode output is the reference of both gaps: copied to float64 and
            # its sum of squares taken once per layer, not once per gap.
            train_output = np.asarray(to_numpy(t.output), np.float64)
            train_output_sq = np.vdot(train_output, train_output)
            if f:
                values[i, col(metadata.GAP_COMPOUND)] = gap.root_ratio(
                    _squared_distance(train_output, f.output, to_numpy), train_output_sq
                )
            values[i, col(metadata.GAP_LOCAL)] = gap.root_ratio(
                _squared_distance(train_output, t.inference_output, to_numpy), train_output_sq
            )
            batch_mean, batch_variance = (_flat(m, to_numpy) for m in t.moments)
            if ref.normalises_with_batch_moments() and np.isfinite(batch_mean).all():
                values[i, col(metadata.GAP_LOCAL_DERIVED)] = gap.local_gap_from_stats(
                    batch_mean,
                    batch_variance,
                    layer_stats["moving_mean"],
                    layer_stats["moving_variance"],
                    layer_stats["gamma"] if ref.layer.scale else None,
                    layer_stats["beta"] if ref.layer.center else None,
                    float(ref.layer.epsilon),
                )
        if attribution and self.can_attribute:
            for i in range(len(self._tapped)):
                with (
                    self._tap.active(ProbePass(ATTRIBUTION, i)),
                    self._flavour.stateless(self.model),
                ):
                    y_pred = self.model(x, training=self.scope == SCOPE_MODEL)
                    loss_i = self._score(y, y_pred, sample_weight, with_metrics=False)[0][0]
                values[i, col(metadata.GAP_ATTRIBUTION)] = gap.attribution_share(
                    loss_i, train_losses[0], inference_losses[0]
                )
        return GapResult(
            loss_names=list(self.loss_names),
            metric_names=list(self.metric_names),
            layer_paths=[r.path for r in self._tapped],
            train_losses=train_losses,
            inference_losses=inference_losses,
            train_metrics=train_metrics,
            inference_metrics=inference_metrics,
            layer_values=values,
            probe_size=self.size,
            scope=self.scope,
        )

    def _score(
        self,
        y: Any,
        y_pred: Any,
        sample_weight: Any,
        record_names: bool = False,
        with_metrics: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(losses (L,), metrics (M,)) float64, as ``GapProbe._score``; inside ``stateless``."""
        import keras

        to_numpy = keras.ops.convert_to_numpy
        losses = [math.nan] * len(self.loss_names)
        loss = self._compile_loss
        if loss is not None and y is not None:
            for tracker in loss.metrics:
                tracker.reset_state()
            total = loss(y, y_pred, sample_weight)
            parts = [total] + [m.result() for m in loss.metrics] if len(losses) > 1 else [total]
            losses = [float(to_numpy(v)) for v in parts]
        metrics: list[float] = []
        compiled = self._compile_metrics
        if with_metrics and compiled is not None and y is not None:
            compiled.reset_state()
            compiled.update_state(y, y_pred, sample_weight)
            names = []
            for name, value in self._flavour.metric_results(compiled).items():
                value = np.asarray(to_numpy(value))
                if value.ndim != 0:
                    continue  # non-scalar metric results are not logged
                names.append(name)
                metrics.append(float(value))
            if record_names:
                self.metric_names = names
        return np.asarray(losses, np.float64), np.asarray(metrics, np.float64)


def probe_from_data(data: Any, probe_size: int) -> tuple[Any, Any, Optional[Any]]:
    """``(x, y, sample_weight)`` numpy arrays of the first ``probe_size`` samples of ``probe_data``
    (as ``probe_batch.probe_batch_from_data`` checks it, without TensorFlow)."""
    if not isinstance(data, (tuple, list)) or not 1 <= len(data) <= 3:
        raise TypeError(
            "probe_data must be a tuple (x, y) or (x, y, sample_weight) of arrays, "
            f"got {type(data).__name__}"
        )
    x, y, sample_weight = (tuple(data) + (None, None))[:3]
    arrays = [None if v is None else np.asarray(v)[:probe_size] for v in (x, y, sample_weight)]
    sizes = {len(a) for a in arrays if a is not None and a.ndim > 0}
    if len(sizes) != 1 or 0 in sizes or any(a is not None and a.ndim == 0 for a in arrays):
        raise ValueError(
            "probe_data arrays need a leading batch dimension and one non-zero number of samples"
        )
    return tuple(arrays)


class HostFirstBatchStash:
    """``probe_batch.FirstBatchStash``'s interface on a ``HostKerasFlavour``: the first
    ``probe_size`` samples of the training step that starts at ``first_step`` steps done, copied
    to the host once (``install_first_batch_hook``). The flavour's
    ``use_instrumented_train_function`` must run after ``install``."""

    unsupported: Optional[str] = None

    def __init__(self, model: Any, probe_size: int, first_step: int) -> None:
        self._model = model
        self._probe_size = probe_size
        self._first_step = first_step
        self._batch: Optional[tuple[Any, Any, Any]] = None
        self._installed: Any = None

    def install(self) -> None:
        self._installed = flavour_of(self._model).install_first_batch_hook(
            self._model, self._first_step, self._deliver
        )

    def uninstall(self) -> None:
        if self._installed is not None:
            self._installed.uninstall()
            self._installed = None

    def probe(self) -> Optional[tuple[Any, Any, Any]]:
        """The stashed batch, or None when nothing was stashed yet."""
        flavour_of(self._model).settle()
        return self._batch

    def _deliver(self, x: Any, y: Any, sample_weight: Any) -> None:
        if self._batch is None:
            self._batch = probe_from_data((x, y, sample_weight), self._probe_size)


def _flat(value: Any, to_numpy: Any) -> np.ndarray:
    return np.asarray(to_numpy(value), np.float64).reshape(-1)


def _squared_distance(reference: np.ndarray, other: Any, to_numpy: Any) -> float:
    """``sum((reference - other)^2)`` in float64 (``reference`` is float64), as one dot product
    of the difference with itself: no array of squares is allocated."""
    difference = reference - np.asarray(to_numpy(other), np.float64)
    return float(np.vdot(difference, difference))
