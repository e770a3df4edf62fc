"""The train/inference gap on a fixed probe batch: forward passes that change nothing.

Framework glue, kept thin; the math lives in ``gap.py``. ``GapProbe`` runs the
model on one fixed *probe batch* in training mode and in inference mode and
measures, without changing any variable:

* the model-level gap: the compiled loss (and compiled metrics) in each mode;
* per BatchNormalization layer, the *compound* gap (relative RMS difference of
  the layer's output between a full training-mode and a full inference-mode
  pass), the *local* gap (the difference the layer itself introduces when fed
  its training-mode input, normalised with batch vs. moving statistics), and
  the local gap *derived* from statistics (``gap.local_gap_from_stats``);
* optionally the *attribution*: one extra training-mode pass per layer with
  only that layer switched to inference mode.

How nothing changes: every pass runs inside its own ``keras.StatelessScope``,
which intercepts the moving-statistics assignments a BN layer makes in
training mode, the seed-generator advances of dropout-like layers, metric
updates and ``add_loss`` calls, while reads see the current values (each pass
starts from the same state). The probe functions are traced with the capture
wrappers paused (``StatsCapture.paused``), so they do not write the captured
batch statistics either. The layers' inputs and outputs are collected by
wrapping each BN layer instance's ``call`` only while the probe functions are
traced.

tf-keras (legacy Keras 2) models have no ``StatelessScope``: there each pass
runs inside ``tf_keras.restoring``, which assigns the non-trainable and
metric variables back to the values read before the pass (bit-exact), and
``gap_scope="model"`` falls back to ``"batchnorm"`` with a warning (tf-keras
dropout draws from stateful RNG ops no scope can rewind).

The probe batch is either given (``probe_data``) or stashed from the first
training batch by ``FirstBatchStash`` (a wrapper around ``train_step`` that
copies at most ``probe_size`` samples of the first batch into variables owned
by this module, once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tb_bn_plugin import metadata
from tb_bn_plugin.numerics import gap
from tb_bn_plugin.training.capture import BatchNormRef, StatsCapture
from tb_bn_plugin.training.compat import tf_keras

keras = tf.keras

DEFAULT_PROBE_SIZE = 256

# Which layers run in training mode in the training-mode passes.
SCOPE_BATCHNORM = (
    "batchnorm"  # only BatchNormalization layers; Dropout & co. stay in inference mode
)
SCOPE_MODEL = "model"  # the whole model with training=True, as in fit
SCOPES = (SCOPE_BATCHNORM, SCOPE_MODEL)


class GapProbeWarning(UserWarning):
    """The train/inference gap cannot be (fully) measured; training is unaffected."""


# -- the probe batch -------------------------------------------------------------


@dataclasses.dataclass
class ProbeBatch:
    """A fixed batch: ``(x, y, sample_weight)`` as (nested) tensors; y/sample_weight may be None."""

    x: Any
    y: Any
    sample_weight: Any

    @property
    def size(self) -> int:
        return int(tf.nest.flatten(self.x)[0].shape[0])


def probe_batch_from_data(data: Any, probe_size: int) -> ProbeBatch:
    """A ``ProbeBatch`` of the first ``probe_size`` samples of ``(x, y)`` or ``(x, y, sample_weight)``."""
    if not isinstance(data, (tuple, list)) or not 1 <= len(data) <= 3:
        raise TypeError(
            "probe_data must be a tuple (x, y) or (x, y, sample_weight) of arrays or tensors, "
            f"got {type(data).__name__}"
        )
    x, y, sample_weight = (tuple(data) + (None, None))[:3]

    def to_tensor(value: Any) -> Optional[tf.Tensor]:
        if value is None:
            return None
        if (
            isinstance(value, tf.data.Dataset)
            or not hasattr(value, "__len__")
            and not tf.is_tensor(value)
        ):
            raise TypeError(f"probe_data must hold arrays or tensors, got {type(value).__name__}")
        tensor = tf.convert_to_tensor(value)
        if tensor.shape.rank == 0:
            raise ValueError("probe_data arrays need a leading batch dimension")
        return tensor[:probe_size]

    x, y, sample_weight = tf.nest.map_structure(to_tensor, (x, y, sample_weight))
    sizes = {int(t.shape[0]) for t in tf.nest.flatten((x, y, sample_weight)) if t is not None}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"probe_data arrays must have one non-zero number of samples, got {sorted(sizes)}"
        )
    return ProbeBatch(x, y, sample_weight)


class FirstBatchStash:
    """Copies (at most ``probe_size`` samples of) the first training batch into variables.

    ``install`` wraps ``model.train_step`` on the instance; the wrapper adds a
    ``tf.cond`` that copies the batch once (XLA-compatible: fixed-shape,
    zero-padded variables of ``probe_size`` samples). Keras must remake its
    train function afterwards (``make_train_function(force=True)``). Not
    supported (``unsupported`` says why; nothing is stashed): tf.distribute
    strategies, non-dense tensors, inputs with unknown non-batch dimensions.
    """

    def __init__(self, model: Any, probe_size: int) -> None:
        self._model = model
        self._probe_size = probe_size
        self._structure: Any = None
        self._slots: Optional[list[Optional[tf.Variable]]] = None
        self._count: Optional[tf.Variable] = None
        self.unsupported: Optional[str] = None
        if getattr(model, "_distribute_strategy", None) is not None:
            self.unsupported = "the model trains under a tf.distribute strategy"

    def install(self) -> None:
        if self.unsupported is None:
            object.__setattr__(self._model, "train_step", self._wrap())

    def uninstall(self) -> None:
        self._model.__dict__.pop("train_step", None)

    def probe(self) -> Optional[ProbeBatch]:
        """The stashed batch, or None when nothing was stashed yet."""
        if self._count is None or self.unsupported is not None:
            return None
        n = int(self._count.numpy())
        if n == 0:
            return None
        leaves = [None if v is None else tf.identity(v[:n]) for v in self._slots]
        x, y, sample_weight = tf.nest.pack_sequence_as(self._structure, leaves)
        return ProbeBatch(x, y, sample_weight)

    def _wrap(self):
        original = type(self._model).train_step.__get__(self._model)
        stash = self

        def train_step(data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            flat = tf.nest.flatten((x, y, sample_weight))
            if stash._make_slots((x, y, sample_weight), flat):
                tf.cond(
                    tf.equal(stash._count, 0), lambda: stash._copy(flat), lambda: tf.constant(False)
                )
            return original(data)

        return train_step

    def _make_slots(self, structure: Any, flat: list) -> bool:
        """Create the variables on the first trace; False when the data cannot be stashed."""
        if self.unsupported is not None:
            return False
        if self._slots is not None:
            if len(flat) != len(self._slots) or any(
                (t is None) != (v is None) for t, v in zip(flat, self._slots)
            ):
                self.unsupported = "the training data changed structure between traces"
                return False
            return True
        for t in flat:
            if t is None:
                continue
            if not isinstance(t, tf.Tensor):
                self.unsupported = (
                    f"the training data holds a {type(t).__name__}, not dense tensors"
                )
                return False
            if t.shape.rank is None or t.shape.rank == 0 or not t.shape[1:].is_fully_defined():
                self.unsupported = f"a training input has unknown non-batch dimensions ({t.shape})"
                return False
        with tf.init_scope():
            self._slots = [
                None
                if t is None
                else tf.Variable(
                    tf.zeros([self._probe_size] + t.shape[1:].as_list(), t.dtype),
                    trainable=False,
                    name="bn_probe_stash",
                )
                for t in flat
            ]
            self._count = tf.Variable(0, dtype=tf.int32, trainable=False, name="bn_probe_count")
        self._structure = tf.nest.map_structure(lambda _: 0, structure)
        return True

    def _copy(self, flat: list) -> tf.Tensor:
        present = [t for t in flat if t is not None]
        n = tf.minimum(tf.shape(present[0])[0], self._probe_size)
        for t, slot in zip(flat, self._slots):
            if t is None:
                continue
            part = t[: self._probe_size]
            slot.assign(tf.pad(part, [[0, self._probe_size - n]] + [[0, 0]] * (t.shape.rank - 1)))
        self._count.assign(n)
        return tf.constant(True)


# -- result ---------------------------------------------------------------------


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

    def field(self, name: str) -> dict[str, float]:
        """One per-layer field (``compound``, ``local``, ...) as ``{path: value}``."""
        column = metadata.GAP_LAYER_FIELDS.index(name)
        return {path: float(v) for path, v in zip(self.layer_paths, self.layer_values[:, column])}

    def record(self) -> np.ndarray:
        """The flat float32 tensor stored under ``metadata.gap_tag()`` (layout in ``metadata``)."""
        return np.concatenate(
            [
                self.train_losses,
                self.inference_losses,
                self.train_metrics,
                self.inference_metrics,
                self.layer_values.ravel(),
            ]
        ).astype(np.float32)

    def content(self) -> dict[str, Any]:
        """The metadata content describing ``record``'s layout."""
        return {
            "kind": metadata.KIND_GAP,
            "losses": list(self.loss_names),
            "metrics": list(self.metric_names),
            "layers": list(self.layer_paths),
            "layer_fields": list(metadata.GAP_LAYER_FIELDS),
            "probe_size": int(self.probe_size),
            "scope": self.scope,
        }


# -- tapping BN layers while tracing -------------------------------------------


class _Pass:
    """What the BN wrappers do during one traced forward pass, and what they saw.

    kind ``inference``: every BN layer in inference mode. ``train``: every BN
    layer in training mode; tapped layers also compute their inference-mode
    output on the same input (the local gap) and the input's moments.
    ``attribution``: training mode except the tapped layer whose slot equals
    the scalar tensor ``index``, which runs in inference mode.
    """

    def __init__(self, kind: str, index: Optional[tf.Tensor] = None) -> None:
        self.kind = kind
        self.index = index
        self.records: dict[int, dict[str, Any]] = {}


class _Tap:
    """Wraps the ``call`` of every BN layer instance (only while probe functions are traced)."""

    def __init__(
        self, all_refs: Sequence[BatchNormRef], tapped: Sequence[BatchNormRef], moments: Any
    ) -> None:
        slots = {id(r.layer): i for i, r in enumerate(tapped)}
        self._moments = moments
        self._layers = [(r.layer, slots.get(id(r.layer))) for r in all_refs]
        self.current: Optional[_Pass] = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        for layer, slot in self._layers:
            object.__setattr__(layer, "call", self._wrap(layer, slot))
        try:
            yield
        finally:
            for layer, _ in self._layers:
                layer.__dict__.pop("call", None)

    @contextlib.contextmanager
    def active(self, probe_pass: _Pass) -> Iterator[_Pass]:
        self.current = probe_pass
        try:
            yield probe_pass
        finally:
            self.current = None

    def _wrap(self, layer: Any, slot: Optional[int]):
        original = type(layer).call.__get__(layer)
        tap = self

        def call(inputs, training=None, mask=None):
            p = tap.current
            kwargs = {} if mask is None else {"mask": mask}
            if p is None:
                return original(inputs, training=training, **kwargs)
            first = slot is not None and slot not in p.records
            if p.kind == "inference":
                out = original(inputs, training=False, **kwargs)
                if first:
                    p.records[slot] = {"out": out}
                return out
            wants_inference = slot is not None and (first or p.kind == "attribution")
            # The inference-mode output first: the training-mode call assigns the
            # moving statistics (inside the stateless scope), later reads would see that.
            out_inference = original(inputs, training=False, **kwargs) if wants_inference else None
            out_train = original(inputs, training=True, **kwargs)
            if p.kind == "train":
                if first:
                    p.records[slot] = {
                        "out": out_train,
                        "local_inference": out_inference,
                        "moments": tap._moments(layer, inputs, mask),
                        "masked": mask is not None,
                    }
                return out_train
            if slot is None:
                return out_train
            return tf.where(tf.equal(p.index, slot), out_inference, out_train)

        return call


class _Keras3:
    """How ``GapProbe`` reaches a Keras 3 model's compiled loss/metrics and keeps its state.

    ``tf_keras.ProbeAdapter`` is the tf-keras counterpart.
    """

    supports_model_scope = True

    def __init__(self, model: Any) -> None:
        self._model = model

    def compiled_loss(self) -> Any:
        return getattr(self._model, "_compile_loss", None)

    def compiled_metrics(self) -> Any:
        return getattr(self._model, "_compile_metrics", None)

    @staticmethod
    def is_built(container: Any) -> bool:
        return bool(getattr(container, "built", False))

    @staticmethod
    def metric_results(container: Any) -> dict[str, Any]:
        return container.result()

    @staticmethod
    def moments(layer: Any, inputs: Any, mask: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """The (mean, biased variance) a BN layer normalises ``inputs`` with, as (C,) float32."""
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = tf.cast(inputs, compute_dtype)
        # The class's own _moments: the capture wrapper on the instance stays out of this.
        mean, variance = type(layer)._moments(layer, inputs, mask)
        return tf.reshape(tf.cast(mean, tf.float32), [-1]), tf.reshape(
            tf.cast(variance, tf.float32), [-1]
        )

    @staticmethod
    def stateless() -> contextlib.AbstractContextManager:
        return keras.StatelessScope()

    @staticmethod
    def check_probe(refs: Sequence[BatchNormRef], size: int) -> None:
        """Any probe batch size works for Keras 3 layers."""


def _adapter(model: Any) -> Any:
    """The framework adapter for ``model``: ``_Keras3`` or ``tf_keras.ProbeAdapter``."""
    return tf_keras.ProbeAdapter(model) if tf_keras.is_legacy(model) else _Keras3(model)


def _sums_of_squares(reference: Any, other: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """``(sum((reference - other)^2), sum(reference^2))`` in float32."""
    reference = tf.cast(reference, tf.float32)
    other = tf.cast(other, tf.float32)
    return tf.reduce_sum(tf.square(reference - other)), tf.reduce_sum(tf.square(reference))


def _root_ratio(numerator_sq: np.ndarray, denominator_sq: np.ndarray) -> np.ndarray:
    """Same conventions as ``gap.relative_rms_difference``: 0/0 -> 0, x/0 -> inf, NaN propagates."""
    numerator_sq = np.asarray(numerator_sq, dtype=np.float64)
    denominator_sq = np.asarray(denominator_sq, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt(numerator_sq / denominator_sq)
    return np.where((numerator_sq == 0) & (denominator_sq == 0), 0.0, ratio)


# -- the probe --------------------------------------------------------------------


class GapProbe:
    """Measures the train/inference gap of ``model`` on a fixed probe batch.

    The probe functions are traced once (the main one at construction, the
    attribution one at its first use) and reused: build one per ``fit`` (the
    layer set and probe batch are then fixed).

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
        self._framework = _adapter(model)
        self.warnings: list[str] = []
        if scope == SCOPE_MODEL and not self._framework.supports_model_scope:
            self.warnings.append(
                'gap_scope="model" is not supported for tf-keras models (their dropout RNG state cannot be '
                'left untouched); the gap is measured with gap_scope="batchnorm"'
            )
            scope = SCOPE_BATCHNORM
        self.scope = scope
        self.probe = probe
        self._tapped = list(tapped)
        self._framework.check_probe(all_refs, probe.size)
        self._tap = _Tap(all_refs, tapped, self._framework.moments)
        self._capture = capture
        self._compile_loss, self._compile_metrics = self._compiled_objects()
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
        values[:, col(metadata.GAP_COMPOUND)] = _root_ratio(
            out["compound_diff_sq"], out["compound_ref_sq"]
        )
        values[:, col(metadata.GAP_LOCAL)] = _root_ratio(out["local_diff_sq"], out["local_ref_sq"])
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
            span = inference_losses[0] - train_losses[0]
            for i in range(n):
                loss_i = float(self._attribute(tf.constant(i, tf.int32), *self._args).numpy())
                with np.errstate(divide="ignore", invalid="ignore"):
                    values[i, col(metadata.GAP_ATTRIBUTION)] = (
                        (loss_i - train_losses[0]) / span if span != 0 else np.nan
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
        inference = _Pass("inference")
        with self._tap.active(inference), self._framework.stateless():
            y_pred = self.model(x, training=False)
            inference_losses, inference_metrics = self._score(
                y, y_pred, sample_weight, record_names=True
            )
        train = _Pass("train")
        with self._tap.active(train), self._framework.stateless():
            y_pred = self.model(x, training=self.scope == SCOPE_MODEL)
            train_losses, train_metrics = self._score(y, y_pred, sample_weight)
        compound, local = [], []
        for i, layer_stats in enumerate(stats):
            t, f = train.records.get(i), inference.records.get(i)
            compound.append(_sums_of_squares(t["out"], f["out"]) if t and f else (nan, nan))
            local.append(_sums_of_squares(t["out"], t["local_inference"]) if t else (nan, nan))
            if t:
                layer_stats["batch_mean"], layer_stats["batch_variance"] = t["moments"]
            else:
                channels = layer_stats["moving_mean"].shape[0]
                layer_stats["batch_mean"] = layer_stats["batch_variance"] = tf.fill([channels], nan)

        def column(pairs, k):
            return tf.stack([p[k] for p in pairs]) if pairs else tf.zeros([0])

        return {
            "train_losses": train_losses,
            "inference_losses": inference_losses,
            "train_metrics": train_metrics,
            "inference_metrics": inference_metrics,
            "compound_diff_sq": column(compound, 0),
            "compound_ref_sq": column(compound, 1),
            "local_diff_sq": column(local, 0),
            "local_ref_sq": column(local, 1),
            "stats": stats,
        }

    def _attribution_pass(self, index: tf.Tensor, *args: tf.Tensor) -> tf.Tensor:
        x, y, sample_weight = self._unpack(args)
        with self._tap.active(_Pass("attribution", index)), self._framework.stateless():
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
        """(losses (L,), metrics (M,)) float32; only call inside ``self._framework.stateless()``.

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
            for name, value in self._framework.metric_results(compiled).items():
                value = tf.convert_to_tensor(value)
                if value.shape.rank != 0:
                    continue  # non-scalar metric results are not logged
                names.append(name)
                metrics.append(tf.cast(value, tf.float32))
            if record_names:
                self.metric_names = names
        return tf.stack(losses), tf.stack(metrics) if metrics else tf.zeros([0])

    def _compiled_objects(self) -> tuple[Any, Any]:
        """The model's built CompileLoss / CompileMetrics, or None with a warning why not."""
        framework = self._framework
        loss = framework.compiled_loss()
        if loss is None:
            self.warnings.append(
                "the model has no compiled loss (compile(loss=...)); the probe losses are NaN and no attribution is computed"
            )
        elif not framework.is_built(loss):
            self.warnings.append(
                "the compiled loss was not built by a training step; the probe losses are NaN"
            )
            loss = None
        metrics = framework.compiled_metrics()
        if metrics is not None and not framework.is_built(metrics):
            self.warnings.append(
                "the compiled metrics were not built by a training step; they are not logged"
            )
            metrics = None
        return loss, metrics


def _to_numpy(value: Any) -> Any:
    return tf.nest.map_structure(
        lambda t: t.numpy().astype(np.float64) if tf.is_tensor(t) else t, value
    )
