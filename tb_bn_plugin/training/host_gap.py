"""The train/inference gap on Keras 3 backends other than TensorFlow (JAX, PyTorch).

``HostGapProbe`` measures what ``gap_probe.GapProbe`` measures, with the same
passes, ``layer_tap.BatchNormTap`` routing and ``GapResult``, written with
``keras.ops`` instead of TensorFlow ops and run as the flavour's
``probe_function`` makes them run: on JAX the passes are one ``jax.jit``
function (the attribution pass another, the layer's index an argument),
traced at the first evaluation and reused for the probe's later evaluations
and the model's later fits (``BatchNormCallback`` keeps the probe in the
model's ``FitCache``); on PyTorch they run eagerly without autograd. The
passes are pure functions of the model's variables' values, passed in as
arguments: every pass runs inside a ``keras.StatelessScope`` mapping each
variable to its value (moving statistics, seed and metric updates are
intercepted), with the tap installed and the statistics capture paused only
for the duration of the passes. On JAX the model's variables are first
brought up to date with the state Keras holds between epoch-end syncs
(``HostKerasFlavour.sync_variables``). The probe batch is ``probe_data``
(``probe_batch``); the passes return only scalars (losses, metrics, each
layer's sums of squares, reduced in float32 as ``GapProbe`` reduces them) and
each layer's (C,) moments; the gaps' ratios are taken on the host.
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
        # Every variable a pass reads (weights, moving statistics, seed-generator states): the
        # passes take their values as arguments.
        self._variables = list(model.variables)
        self._main = self._flavour.probe_function(self._main_pass)
        self._attribute = self._flavour.probe_function(self._attribution_pass)

    @property
    def can_attribute(self) -> bool:
        return self._compile_loss is not None and self.probe[1] is not None and bool(self._tapped)

    def use_probe(self, probe: tuple[Any, Any, Any], capture: Any = None) -> bool:
        """Measure on ``probe`` from now on (a batch of other shapes is compiled anew at its
        first pass), pausing ``capture`` (a later fit's) during the passes."""
        self.probe = probe
        self.size = int(len(probe[0]))
        self._capture = capture
        return True

    def evaluate(self, attribution: bool = False) -> GapResult:
        """One gap evaluation at the model's current state; changes no variable."""
        self._flavour.sync_variables(self.model)
        paused = self._capture.paused() if self._capture is not None else contextlib.nullcontext()
        with self._tap.installed(), paused:
            return self._evaluate(attribution)

    def _evaluate(self, attribution: bool) -> GapResult:
        import keras

        to_numpy = keras.ops.convert_to_numpy
        values = [v.value for v in self._variables]
        out = self._main(values, *self.probe)
        current = {id(v): value for v, value in zip(self._variables, values)}
        col = metadata.GAP_LAYER_FIELDS.index
        values_out = np.full((len(self._tapped), len(metadata.GAP_LAYER_FIELDS)), np.nan)
        sums = {k: np.asarray([_float(v) for v in out[k]]) for k in _SUMS}
        values_out[:, col(metadata.GAP_COMPOUND)] = gap.root_ratio(
            sums["compound_diff_sq"], sums["train_output_sq"]
        )
        values_out[:, col(metadata.GAP_LOCAL)] = gap.root_ratio(
            sums["local_diff_sq"], sums["train_output_sq"]
        )
        for i, (ref, moments) in enumerate(zip(self._tapped, out["moments"])):
            layer = ref.layer
            if moments is None:
                continue
            batch_mean, batch_variance = (_flat(m, to_numpy) for m in moments)
            if ref.normalises_with_batch_moments() and np.isfinite(batch_mean).all():
                read = lambda v: _flat(current[id(v)], to_numpy)  # noqa: E731
                values_out[i, col(metadata.GAP_LOCAL_DERIVED)] = gap.local_gap_from_stats(
                    batch_mean,
                    batch_variance,
                    read(layer.moving_mean),
                    read(layer.moving_variance),
                    read(layer.gamma) if layer.scale else None,
                    read(layer.beta) if layer.center else None,
                    float(layer.epsilon),
                )
        train_losses, inference_losses = (
            np.full(len(self.loss_names), np.nan)
            if out[k] is None
            else np.asarray([to_numpy(v) for v in out[k]], np.float64)
            for k in ("train_losses", "inference_losses")
        )
        if attribution and self.can_attribute:
            for i in range(len(self._tapped)):
                loss_i = float(to_numpy(self._attribute(np.int32(i), values, *self.probe)))
                values_out[i, col(metadata.GAP_ATTRIBUTION)] = gap.attribution_share(
                    loss_i, train_losses[0], inference_losses[0]
                )
        return GapResult(
            loss_names=list(self.loss_names),
            metric_names=list(self.metric_names),
            layer_paths=[r.path for r in self._tapped],
            train_losses=train_losses,
            inference_losses=inference_losses,
            train_metrics=np.asarray([to_numpy(v) for v in out["train_metrics"]], np.float64),
            inference_metrics=np.asarray(
                [to_numpy(v) for v in out["inference_metrics"]], np.float64
            ),
            layer_values=values_out,
            probe_size=self.size,
            scope=self.scope,
        )

    def _stateless(self, values: Sequence[Any]) -> Any:
        """A ``keras.StatelessScope`` in which the model's variables read ``values`` (arguments of
        the compiled passes on JAX, not constants captured when tracing) and every assignment
        is intercepted."""
        import keras

        return keras.StatelessScope(state_mapping=list(zip(self._variables, values)))

    def _main_pass(self, values: Sequence[Any], x: Any, y: Any, sample_weight: Any) -> dict:
        """The inference-mode and the training-mode pass from ``values``: their losses and
        metrics, and per tapped layer the sums of squares of both gaps and the moments of its
        training-mode input."""
        inference = ProbePass(INFERENCE)
        with self._tap.active(inference), self._stateless(values):
            y_pred = self.model(x, training=False)
            inference_losses, inference_metrics = self._score(y, y_pred, sample_weight, True)
        train = ProbePass(TRAIN)
        with self._tap.active(train), self._stateless(values):
            y_pred = self.model(x, training=self.scope == SCOPE_MODEL)
            train_losses, train_metrics = self._score(y, y_pred, sample_weight)
        # Per tapped layer (None where it did not run): sum(t^2) of its training-mode output t,
        # the denominator of both gaps, and the sums of squared differences to its output in
        # the inference pass and in inference mode on the same input, in float32 on the
        # device as ``GapProbe`` takes them: only scalars and (C,) moments leave the passes.
        slots = range(len(self._tapped))
        trained = [train.outputs.get(i) for i in slots]
        inferred = [inference.outputs.get(i) for i in slots]
        train_outputs = [_float32(t.output) if t else None for t in trained]
        return {
            "train_losses": train_losses,
            "inference_losses": inference_losses,
            "train_metrics": train_metrics,
            "inference_metrics": inference_metrics,
            "train_output_sq": [_sum_sq(t) if t is not None else None for t in train_outputs],
            "compound_diff_sq": [
                _sum_sq(t - _float32(f.output)) if t is not None and f else None
                for t, f in zip(train_outputs, inferred)
            ],
            "local_diff_sq": [
                _sum_sq(t - _float32(outputs.inference_output)) if t is not None else None
                for t, outputs in zip(train_outputs, trained)
            ],
            "moments": [t.moments if t else None for t in trained],
        }

    def _attribution_pass(
        self, index: Any, values: Sequence[Any], x: Any, y: Any, sample_weight: Any
    ) -> Any:
        """The compiled loss of a training-mode pass with the tapped layer ``index`` in
        inference mode."""
        with self._tap.active(ProbePass(ATTRIBUTION, index)), self._stateless(values):
            y_pred = self.model(x, training=self.scope == SCOPE_MODEL)
            return self._score(y, y_pred, sample_weight, with_metrics=False)[0][0]

    def _score(
        self,
        y: Any,
        y_pred: Any,
        sample_weight: Any,
        record_names: bool = False,
        with_metrics: bool = True,
    ) -> tuple[Optional[list[Any]], list[Any]]:
        """(losses (L,) or None without a compiled loss or targets, metrics (M,)): scalar
        tensors, as ``GapProbe._score``; inside ``_stateless``."""
        import keras

        losses = None
        loss = self._compile_loss
        if loss is not None and y is not None:
            for tracker in loss.metrics:
                tracker.reset_state()
            total = loss(y, y_pred, sample_weight)
            losses = (
                [total] + [m.result() for m in loss.metrics]
                if len(self.loss_names) > 1
                else [total]
            )
        metrics: list[Any] = []
        compiled = self._compile_metrics
        if with_metrics and compiled is not None and y is not None:
            compiled.reset_state()
            compiled.update_state(y, y_pred, sample_weight)
            names = []
            for name, value in self._flavour.metric_results(compiled).items():
                value = keras.ops.convert_to_tensor(value)
                if keras.ops.ndim(value) != 0:
                    continue  # non-scalar metric results are not logged
                names.append(name)
                metrics.append(value)
            if record_names:
                self.metric_names = names
        return losses, metrics


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


# The per-layer sums of squares ``_main_pass`` returns.
_SUMS = ("train_output_sq", "compound_diff_sq", "local_diff_sq")


def _flat(value: Any, to_numpy: Any) -> np.ndarray:
    return np.asarray(to_numpy(value), np.float64).reshape(-1)


def _float(value: Any) -> float:
    """A scalar the passes returned as a float (None, a layer that did not run: NaN)."""
    import keras

    return math.nan if value is None else float(keras.ops.convert_to_numpy(value))


def _float32(value: Any) -> Any:
    import keras

    return keras.ops.cast(value, "float32")


def _sum_sq(value: Any) -> Any:
    import keras

    return keras.ops.sum(keras.ops.square(value))
