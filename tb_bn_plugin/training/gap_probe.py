"""The train/inference gap on a fixed probe batch: forward passes that change nothing.

Owns ``GapProbe`` (the passes and what they measure), ``GapResult`` (one
measurement, as numpy) and ``GapProbeWarning``. The math lives in
``numerics.gap``, the payload's encoding in ``records`` (``gap_record``,
``gap_content``). ``GapProbe`` runs the model on one fixed *probe batch*
(``probe_batch``) in training mode and in inference mode and measures,
without changing any variable:

* the model-level gap: the compiled loss (and compiled metrics) in each mode;
* per BatchNormalization layer, the *compound* gap (relative RMS difference of
  the layer's output between a full training-mode and a full inference-mode
  pass), the *local* gap (the difference the layer itself introduces when fed
  its training-mode input, normalised with batch vs. moving statistics), and
  the local gap *derived* from statistics (``gap.local_gap_from_stats``);
* optionally the *attribution*: one extra training-mode pass per layer with
  only that layer switched to inference mode.

How nothing changes: every pass runs inside the model's Keras flavour's
``stateless`` scope (``compat``): Keras 3's ``keras.StatelessScope`` intercepts
every assignment (moving statistics, seed-generator advances of dropout-like
layers, metric updates); tf-keras restores its non-trainable and metric
variables after the pass, and ``gap_scope="model"`` falls back to
``"batchnorm"`` with a warning there (tf-keras dropout draws from stateful RNG
ops no scope can rewind). The probe functions are traced with the capture
wrappers paused (``StatsCapture.paused``), so they do not write the captured
batch statistics either. The layers' inputs and outputs are collected by a
``layer_tap.BatchNormTap``, installed only while the probe functions are traced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata, records
from tb_bn_plugin.numerics import gap
from tb_bn_plugin.training.capture import BatchNormRef, StatsCapture
from tb_bn_plugin.training.compat import flavour_of
from tb_bn_plugin.training.layer_tap import ATTRIBUTION, INFERENCE, TRAIN, BatchNormTap, ProbePass
from tb_bn_plugin.training.lazy_tf import tf
from tb_bn_plugin.training.probe_batch import ProbeBatch

# Which layers run in training mode in the training-mode passes.
SCOPE_BATCHNORM = (
    "batchnorm"  # only BatchNormalization layers; Dropout & co. stay in inference mode
)
SCOPE_MODEL = "model"  # the whole model with training=True, as in fit
SCOPES = (SCOPE_BATCHNORM, SCOPE_MODEL)


class GapProbeWarning(UserWarning):
    """The train/inference gap cannot be (fully) measured; training is unaffected."""


@dataclasses.dataclass
class GapResult:
    """One gap evaluation, as numpy (float64; NaN where not measured).

    ``losses``: ``loss`` (the compiled loss, no regularisation penalties) then,
    for multi-output models, each output's unweighted loss. ``layer_values``:
    (N, F) with F = ``metadata.GAP_LAYER_FIELDS`` for ``layer_paths``.
    """

    loss_names: list[str]
    metric_names: list[str]
    layer_paths: list[str]
    train_losses: np.ndarray
    inference_losses: np.ndarray
    train_metrics: np.ndarray
    inference_metrics: np.ndarray
    layer_values: np.ndarray
    probe_size: int
    scope: str

    def record(self) -> np.ndarray:
        """The ``gap`` payload's tensor of this evaluation (``records.gap_record``)."""
        return records.gap_record(
            self.train_losses,
            self.inference_losses,
            self.train_metrics,
            self.inference_metrics,
            self.layer_values,
        )


class GapProbe:
    """Measures the train/inference gap of ``model`` on a fixed probe batch.

    The probe functions are traced once (the main one at construction, the
    attribution one at its first use) and reused for the same layers and a
    probe batch of the same shapes (``use_probe``): ``BatchNormCallback`` keeps
    one per model across fits.

    Args:
      model: a built Keras 3 or tf-keras model; the compiled loss/metrics are used when the
        model is compiled and has trained a step (else losses/metrics are NaN).
      all_refs: every BatchNormalization layer of the model (all switch modes).
      tapped: the layers per-layer gaps are measured for (a subset of ``all_refs``).
      probe: the probe batch.
      scope: ``"batchnorm"`` or ``"model"`` (see ``BatchNormCallback``).
      capture: the callback's ``StatsCapture``; paused while tracing.

    A BN layer called more than once per forward pass (a shared layer) is
    measured at its first call; attribution switches all its calls. For
    masked inputs the measured gaps include masked positions, the derived
    one uses the masked statistics.

    Cost of ``evaluate``: two forward passes (plus, per tapped layer, one extra
    BN normalisation and a moments reduction), and with ``attribution`` one
    more forward pass per tapped layer.
    """

    def __init__(
        self,
        model: Any,
        all_refs: Sequence[BatchNormRef],
        tapped: Sequence[BatchNormRef],
        probe: ProbeBatch,
        scope: str = SCOPE_BATCHNORM,
        capture: Optional[StatsCapture] = None,
    ) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        self.model = model
        self._flavour = flavour_of(model)
        self.warnings: list[str] = []
        if scope == SCOPE_MODEL and not self._flavour.supports_model_scope:
            self.warnings.append(
                'gap_scope="model" is not supported for tf-keras models (their dropout RNG state '
                'cannot be left untouched); the gap is measured with gap_scope="batchnorm"'
            )
            scope = SCOPE_BATCHNORM
        self.scope = scope
        self.probe = probe
        self._tapped = list(tapped)
        self._flavour.check_probe(all_refs, probe.size)
        self._tap = BatchNormTap(all_refs, tapped)
        self._capture = capture
        self._compile_loss, self._compile_metrics = compiled_objects(
            self._flavour, model, self.warnings
        )
        self.loss_names = ["loss"]
        if self._compile_loss is not None and len(self._compile_loss.metrics) > 1:
            self.loss_names += [m.name for m in self._compile_loss.metrics]
        self.metric_names: list[str] = []
        structure = (probe.x, probe.y, probe.sample_weight)
        self._structure = tf.nest.map_structure(lambda _: 0, structure)
        leaves = tf.nest.flatten(structure)
        self._present = [i for i, t in enumerate(leaves) if t is not None]
        self._n_leaves = len(leaves)
        self._args = [leaves[i] for i in self._present]
        with self._tracing():
            self._main = tf.function(self._main_pass, autograph=False).get_concrete_function(
                *self._args
            )
        self._attribute: Any = None  # traced on first use

    def use_probe(self, probe: ProbeBatch) -> bool:
        """Measure on ``probe`` from now on, without tracing again, if it has the traced probe
        batch's structure, shapes and dtypes; otherwise return False and change nothing."""
        structure = (probe.x, probe.y, probe.sample_weight)
        if tf.nest.map_structure(lambda _: 0, structure) != self._structure:
            return False
        leaves = tf.nest.flatten(structure)
        if [i for i, t in enumerate(leaves) if t is not None] != self._present:
            return False
        args = [tf.convert_to_tensor(leaves[i]) for i in self._present]
        if any(
            new.shape != old.shape or new.dtype != old.dtype for new, old in zip(args, self._args)
        ):
            return False
        self.probe = probe
        self._args = args
        return True

    @property
    def can_attribute(self) -> bool:
        """Whether ``evaluate(attribution=True)`` computes attributions (needs a compiled loss)."""
        return self._compile_loss is not None and self.probe.y is not None and bool(self._tapped)

    # -- public ---------------------------------------------------------------

    def evaluate(self, attribution: bool = False) -> GapResult:
        """One gap evaluation at the model's current state; changes no variable."""
        out = {k: _to_numpy(v) for k, v in self._main(*self._args).items()}
        n = len(self._tapped)
        values = np.full((n, len(metadata.GAP_LAYER_FIELDS)), np.nan)
        col = metadata.GAP_LAYER_FIELDS.index
        values[:, col(metadata.GAP_COMPOUND)] = gap.root_ratio(
            out["compound_diff_sq"], out["train_output_sq"]
        )
        values[:, col(metadata.GAP_LOCAL)] = gap.root_ratio(
            out["local_diff_sq"], out["train_output_sq"]
        )
        for i, ref in enumerate(self._tapped):
            stats = out["stats"][i]
            if (
                not ref.normalises_with_batch_moments()
                or not np.isfinite(stats["batch_mean"]).all()
            ):
                continue  # e.g. renorm: training mode is not a plain batch-statistics normalisation
            values[i, col(metadata.GAP_LOCAL_DERIVED)] = gap.local_gap_from_stats(
                stats["batch_mean"],
                stats["batch_variance"],
                stats["moving_mean"],
                stats["moving_variance"],
                stats["gamma"] if ref.layer.scale else None,
                stats["beta"] if ref.layer.center else None,
                float(ref.layer.epsilon),
            )
        train_losses = np.asarray(out["train_losses"], dtype=np.float64)
        inference_losses = np.asarray(out["inference_losses"], dtype=np.float64)
        if attribution and self.can_attribute:
            if self._attribute is None:
                with self._tracing():
                    self._attribute = tf.function(
                        self._attribution_pass, autograph=False
                    ).get_concrete_function(tf.constant(0, tf.int32), *self._args)
            for i in range(n):
                loss_i = float(self._attribute(tf.constant(i, tf.int32), *self._args).numpy())
                values[i, col(metadata.GAP_ATTRIBUTION)] = gap.attribution_share(
                    loss_i, train_losses[0], inference_losses[0]
                )
        return GapResult(
            loss_names=list(self.loss_names),
            metric_names=list(self.metric_names),
            layer_paths=[r.path for r in self._tapped],
            train_losses=train_losses,
            inference_losses=inference_losses,
            train_metrics=np.asarray(out["train_metrics"], dtype=np.float64).reshape(-1),
            inference_metrics=np.asarray(out["inference_metrics"], dtype=np.float64).reshape(-1),
            layer_values=values,
            probe_size=self.probe.size,
            scope=self.scope,
        )

    # -- tracing ----------------------------------------------------------------

    @contextlib.contextmanager
    def _tracing(self) -> Iterator[None]:
        paused = self._capture.paused() if self._capture is not None else contextlib.nullcontext()
        with self._tap.installed(), paused:
            yield

    def _unpack(self, args: Sequence[tf.Tensor]) -> tuple[Any, Any, Any]:
        leaves: list[Any] = [None] * self._n_leaves
        for i, t in zip(self._present, args):
            leaves[i] = t
        return tf.nest.pack_sequence_as(self._structure, leaves)

    def _main_pass(self, *args: tf.Tensor) -> dict[str, Any]:
        x, y, sample_weight = self._unpack(args)
        nan = tf.constant(math.nan, tf.float32)
        # Read before any pass; every pass starts from these values.
        stats = []
        for ref in self._tapped:
            layer = ref.layer
            channels = ref.channels
            read = lambda v: tf.reshape(tf.cast(tf.convert_to_tensor(v), tf.float32), [-1])  # noqa: E731
            stats.append(
                {
                    "moving_mean": read(layer.moving_mean),
                    "moving_variance": read(layer.moving_variance),
                    "gamma": read(layer.gamma) if layer.scale else tf.ones([channels]),
                    "beta": read(layer.beta) if layer.center else tf.zeros([channels]),
                }
            )
        inference = ProbePass(INFERENCE)
        with self._tap.active(inference), self._flavour.stateless(self.model):
            y_pred = self.model(x, training=False)
            inference_losses, inference_metrics = self._score(
                y, y_pred, sample_weight, record_names=True
            )
        train = ProbePass(TRAIN)
        with self._tap.active(train), self._flavour.stateless(self.model):
            y_pred = self.model(x, training=self.scope == SCOPE_MODEL)
            train_losses, train_metrics = self._score(y, y_pred, sample_weight)
        # Per tapped layer: sum(t^2) of its training-mode output t, the denominator of both
        # gaps (taken once: each sum is a pass over a whole activation), and the sums of
        # squared differences to its outputs in the inference pass and in inference mode.
        train_output_sq, compound_diff_sq, local_diff_sq = [], [], []
        for i, layer_stats in enumerate(stats):
            t, f = train.outputs.get(i), inference.outputs.get(i)
            train_output = tf.cast(t.output, tf.float32) if t else None
            train_output_sq.append(tf.reduce_sum(tf.square(train_output)) if t else nan)
            compound_diff_sq.append(_squared_distance(train_output, f.output) if t and f else nan)
            local_diff_sq.append(_squared_distance(train_output, t.inference_output) if t else nan)
            if t:
                layer_stats["batch_mean"], layer_stats["batch_variance"] = t.moments
            else:
                channels = layer_stats["moving_mean"].shape[0]
                layer_stats["batch_mean"] = layer_stats["batch_variance"] = tf.fill([channels], nan)

        def column(sums):
            return tf.stack(sums) if sums else tf.zeros([0])

        return {
            "train_losses": train_losses,
            "inference_losses": inference_losses,
            "train_metrics": train_metrics,
            "inference_metrics": inference_metrics,
            "train_output_sq": column(train_output_sq),
            "compound_diff_sq": column(compound_diff_sq),
            "local_diff_sq": column(local_diff_sq),
            "stats": stats,
        }

    def _attribution_pass(self, index: tf.Tensor, *args: tf.Tensor) -> tf.Tensor:
        x, y, sample_weight = self._unpack(args)
        with self._tap.active(ProbePass(ATTRIBUTION, index)), self._flavour.stateless(self.model):
            y_pred = self.model(x, training=self.scope == SCOPE_MODEL)
            losses, _ = self._score(y, y_pred, sample_weight, with_metrics=False)
        return losses[0]

    def _score(
        self,
        y: Any,
        y_pred: Any,
        sample_weight: Any,
        with_metrics: bool = True,
        record_names: bool = False,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """(losses (L,), metrics (M,)) float32; only call inside the flavour's ``stateless``.

        The model's own compiled loss and metric objects are used, reset first:
        inside the scope their updates are intercepted, so the model's trackers
        keep their values.
        """
        nan = tf.constant(math.nan, tf.float32)
        losses = [nan] * len(self.loss_names)
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
            losses = [tf.cast(tf.reshape(v, []), tf.float32) for v in losses]
        metrics: list[tf.Tensor] = []
        compiled = self._compile_metrics
        if with_metrics and compiled is not None and y is not None:
            compiled.reset_state()
            compiled.update_state(y, y_pred, sample_weight)
            names = []
            for name, value in self._flavour.metric_results(compiled).items():
                value = tf.convert_to_tensor(value)
                if value.shape.rank != 0:
                    continue  # non-scalar metric results are not logged
                names.append(name)
                metrics.append(tf.cast(value, tf.float32))
            if record_names:
                self.metric_names = names
        return tf.stack(losses), tf.stack(metrics) if metrics else tf.zeros([0])


def compiled_objects(flavour: Any, model: Any, warnings: list[str]) -> tuple[Any, Any]:
    """The model's built CompileLoss / CompileMetrics, or None with a warning (appended) why not."""
    loss = flavour.compiled_loss(model)
    if loss is None:
        warnings.append(
            "the model has no compiled loss (compile(loss=...)); the probe losses are NaN "
            "and no attribution is computed"
        )
    elif not flavour.is_built(loss):
        warnings.append(
            "the compiled loss was not built by a training step; the probe losses are NaN"
        )
        loss = None
    metrics = flavour.compiled_metrics(model)
    if metrics is not None and not flavour.is_built(metrics):
        warnings.append(
            "the compiled metrics were not built by a training step; they are not logged"
        )
        metrics = None
    return loss, metrics


def _squared_distance(reference: tf.Tensor, other: Any) -> tf.Tensor:
    """``sum((reference - other)^2)`` in float32 (``reference`` is float32), in one fused
    elementwise op: the same value as ``square`` of the difference, one pass fewer."""
    return tf.reduce_sum(tf.math.squared_difference(reference, tf.cast(other, tf.float32)))


def _to_numpy(value: Any) -> Any:
    return tf.nest.map_structure(
        lambda t: t.numpy().astype(np.float64) if tf.is_tensor(t) else t, value
    )
