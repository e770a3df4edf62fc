"""Precise BatchNorm statistics: the true population statistics of each BN layer's input.

Owns ``precise_stats``, ``recalibrate`` and ``PreciseStatsMonitor``; the
math (combining moments, the EMA error) is ``numerics.moments`` and
``numerics.ema``, the ``ema_error`` payload's encoding ``records``.
``precise_stats`` runs forward passes over some data and measures, for every
BatchNormalization layer, the exact count-weighted mean and biased variance
of its input over all those batches; ``recalibrate`` (explicit, opt-in)
writes them into the layers' ``moving_mean`` / ``moving_variance``;
``PreciseStatsMonitor`` logs how far the EMA is from them during ``fit``.

Which input? The one inference will feed the layer: the forward passes run
the whole model in inference mode (``training=False``), so every earlier
BatchNormalization layer normalises with its moving statistics, dropout is
off, and so on. ``precise_stats`` therefore describes the model *as it is*:
an earlier layer's stale EMA shifts what a later layer sees, and the later
layer's precise statistics include that shift. ``recalibrate`` repeats the
measurement after writing the new statistics until nothing moves, so every
layer ends up calibrated for the recalibrated layers before it.

How? Each layer's ``call`` is wrapped on the instance only while this
module's own ``tf.function`` is traced (and run); the wrapper computes the
batch's per-channel count, mean and sum of squared deviations in float64 and
returns them as extra outputs of that function, then calls the layer as
usual. No variable is created or assigned by ``precise_stats``; the wrappers
are removed afterwards. Batches are combined with Chan's parallel algorithm
in float64 (``moments.combine_moments``). Masked inputs (a Keras mask
reaching the layer) count only the unmasked positions, like the layer does.
On Keras 3's JAX and PyTorch backends (no TensorFlow) the same wrappers run in
an eager inference call instead (``HostKerasFlavour.inference_call``: on JAX
after Keras' own state sync, so a monitor inside ``fit`` sees the current
variables; on PyTorch without autograd) and the moments are taken on the host
(``moments.input_moments``, float64).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata, records
from tb_bn_plugin.diagnostics.ema import ema_error_finding
from tb_bn_plugin.numerics import moments
from tb_bn_plugin.numerics.ema import (
    EmaError,
    RecalibrationReport,
    ema_error_channels,
    layer_recalibration,
    measure_ema_error,
)
from tb_bn_plugin.numerics.moments import Moments
from tb_bn_plugin.summary import SummaryWriter
from tb_bn_plugin.training.capture import (
    BatchNormRef,
    find_batchnorm_layers,
    layer_config,
    require_built,
)
from tb_bn_plugin.training.compat import flavour_of
from tb_bn_plugin.training.compat.bound_keras import Callback
from tb_bn_plugin.training.lazy_tf import tf
from tb_bn_plugin.training.session import DEFAULT_RUN_NAME

DEFAULT_BATCH_SIZE = 32


# -- data -------------------------------------------------------------------------


def _features(element: Any) -> Any:
    """x from a dataset element that is x or (x, y[, w])."""
    if isinstance(element, (tuple, list)):
        return element[0]
    return element


def _slice(x: Any, start: int, stop: int) -> Any:
    if isinstance(x, dict):
        return {k: v[start:stop] for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(v[start:stop] for v in x)
    return x[start:stop]


def _length(x: Any) -> int:
    if isinstance(x, dict):
        return len(next(iter(x.values())))
    if isinstance(x, (tuple, list)):
        return len(x[0])
    return len(x)


def iterate_batches(
    dataset: Any, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[Iterator[Any], Optional[int]]:
    """(iterator over input batches x, number of batches if known).

    ``dataset``: a ``tf.data.Dataset`` (of x or (x, y[, w]), already batched),
    a numpy array / dict of arrays (x), a tuple ``(x, y[, w])`` of arrays, or
    any iterable of batches (e.g. a ``keras.utils.PyDataset``).
    """
    # A tf.data.Dataset exists only once TensorFlow is imported (a JAX user may not have it).
    if sys.modules.get("tensorflow") is not None and isinstance(dataset, tf.data.Dataset):
        cardinality = int(dataset.cardinality().numpy())
        return (_features(e) for e in dataset), (cardinality if cardinality >= 0 else None)
    if isinstance(dataset, (np.ndarray, dict, tuple, list)) and not _is_batch_list(dataset):
        x = dataset[0] if isinstance(dataset, (tuple, list)) else dataset
        n = _length(x)
        starts = range(0, n, batch_size)
        return (_slice(x, s, s + batch_size) for s in starts), len(starts)
    length = len(dataset) if hasattr(dataset, "__len__") else None
    return (_features(e) for e in dataset), length


def _is_batch_list(obj: Any) -> bool:
    """A list of batches rather than a (x, y) tuple of arrays: list whose items are tuples."""
    return isinstance(obj, list) and bool(obj) and isinstance(obj[0], (tuple, list))


# -- measurement ------------------------------------------------------------------


def _tf_moments(
    ref: BatchNormRef, inputs: Any, mask: Any
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-channel (count, mean, m2) of one call's input to ``ref``'s layer, in float64."""
    x = tf.cast(inputs, tf.float64)
    rank = x.shape.rank
    axis = ref.channel_axis(rank)
    axes = [i for i in range(rank) if i != axis]
    if mask is None:
        mean = tf.reduce_mean(x, axis=axes, keepdims=True)
        m2 = tf.reduce_sum(tf.square(x - mean), axis=axes)
        count = tf.cast(tf.size(x), tf.float64) / tf.cast(tf.shape(x)[axis], tf.float64)
        count = tf.fill(tf.shape(m2), count)
        return count, tf.reshape(mean, [-1]), m2
    # Same broadcasting as keras' BatchNormalization._moments: mask has one dim less.
    w = tf.broadcast_to(tf.expand_dims(tf.cast(mask, tf.float64), -1), tf.shape(x))
    count = tf.reduce_sum(w, axis=axes, keepdims=True)
    mean = tf.math.divide_no_nan(tf.reduce_sum(w * x, axis=axes, keepdims=True), count)
    m2 = tf.reduce_sum(w * tf.square(x - mean), axis=axes)
    return tf.reshape(count, [-1]), tf.reshape(mean, [-1]), m2


def _host_moments(ref: BatchNormRef, inputs: Any, mask: Any) -> Moments:
    """``_tf_moments`` for an eager call on a backend other than TensorFlow: on the host."""
    import keras

    x = keras.ops.convert_to_numpy(inputs)
    mask = None if mask is None else keras.ops.convert_to_numpy(mask)
    return moments.input_moments(x, ref.channel_axis(x.ndim), mask)


class _InputRecorder:
    """Wraps the layers' ``call`` on the instances; the wrappers record ``moments_of`` each input
    (traced into a ``tf.function``, or run eagerly)."""

    def __init__(self, refs: Sequence[BatchNormRef], moments_of: Callable[..., Any]) -> None:
        self._refs = list(refs)
        self._moments_of = moments_of
        self._saved: list[tuple[Any, bool, Any]] = []
        self.recorded: list[tuple[int, Any]] = []

    def __enter__(self) -> _InputRecorder:
        for index, ref in enumerate(self._refs):
            layer = ref.layer
            had = "call" in layer.__dict__
            self._saved.append((layer, had, layer.__dict__.get("call")))
            object.__setattr__(layer, "call", self._wrap(index, ref, layer.call))
        return self

    def __exit__(self, *exc: Any) -> None:
        for layer, had, previous in self._saved:
            if had:
                object.__setattr__(layer, "call", previous)
            else:
                layer.__dict__.pop("call", None)
        self._saved = []

    def _wrap(self, index: int, ref: BatchNormRef, original: Any):
        recorder = self

        def call(inputs, training=None, mask=None):
            recorder.recorded.append((index, recorder._moments_of(ref, inputs, mask)))
            return original(inputs, training=training, mask=mask)

        return call


def _selected(model: Any, layers: Optional[Sequence[str]]) -> list[BatchNormRef]:
    refs = find_batchnorm_layers(model, layers)
    require_built(refs, "measuring precise statistics (or fit it)")
    for i, ref in enumerate(refs):
        layer_config(ref, i)  # raises UnsupportedLayerError for odd axes
    return refs


def _batch_measurer(
    model: Any, refs: Sequence[BatchNormRef]
) -> tuple[_InputRecorder, Callable[[Any], list[tuple[int, Moments]]]]:
    """(the recorder to install, a function from one batch x to its ``(layer index, Moments)``).

    TensorFlow models: one ``tf.function`` of the inference pass returns the moments as extra
    outputs (traced, maybe more than once, while the wrappers are in place). Other backends:
    the flavour's eager ``inference_call``, the moments taken on the host.
    """
    flavour = flavour_of(model)
    if not flavour.uses_tensorflow:
        recorder = _InputRecorder(refs, _host_moments)

        def measure_on_host(x):
            recorder.recorded = []
            flavour.inference_call(model, x)
            return recorder.recorded

        return recorder, measure_on_host
    recorder = _InputRecorder(refs, _tf_moments)

    def forward(x):
        recorder.recorded = []
        model(x, training=False)
        return [(index, moments) for index, moments in recorder.recorded]

    fn = tf.function(forward, autograph=False, reduce_retracing=True)

    def measure(x):
        return [(i, Moments(c.numpy(), m.numpy(), m2.numpy())) for i, (c, m, m2) in fn(x)]

    return recorder, measure


def _measure(
    model: Any,
    refs: Sequence[BatchNormRef],
    dataset: Any,
    num_batches: Optional[int],
    progress: bool,
    batch_size: int,
) -> tuple[list[Moments], int]:
    recorder, measure = _batch_measurer(model, refs)
    batches, known = iterate_batches(dataset, batch_size)
    target = num_batches if num_batches is not None else known
    bar = flavour_of(model).progress_bar(target) if progress else None
    totals = [Moments.empty(r.channels) for r in refs]
    done = 0
    with recorder:
        for x in batches:
            if num_batches is not None and done >= num_batches:
                break
            if _length(x) == 0:
                continue
            for index, batch_moments in measure(x):
                totals[index] = moments.merge_moments(totals[index], batch_moments)
            done += 1
            if bar is not None:
                bar.update(done)
    if done == 0:
        raise ValueError("precise_stats got no batches from the dataset")
    return totals, done


def precise_stats(
    model: Any,
    dataset: Any,
    num_batches: Optional[int] = None,
    progress: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    layers: Optional[Sequence[str]] = None,
) -> dict[str, dict[str, Any]]:
    """Population mean and biased variance of every BatchNormalization layer's input.

    Runs ``model(x, training=False)`` over ``dataset`` (see ``iterate_batches``;
    numpy inputs are cut into batches of ``batch_size``), at most
    ``num_batches`` batches, and returns ``{layer_path: {"mean": (C,),
    "variance": (C,), "count": int}}`` (float64; ``count`` = values per
    channel). A layer the forward pass never reached has count 0 and NaN
    statistics. The model is not changed. ``layers``: optional glob patterns
    over layer paths. Module docstring: which input, and how.
    """
    refs = _selected(model, layers)
    totals, _ = _measure(model, refs, dataset, num_batches, progress, batch_size)
    return {ref.path: _as_result(m) for ref, m in zip(refs, totals)}


def _as_result(m: Moments) -> dict[str, Any]:
    count = int(round(float(np.max(m.count)))) if m.count.size else 0
    if count == 0:
        nan = np.full(m.mean.shape, np.nan)
        return {"mean": nan, "variance": nan.copy(), "count": 0}
    return {"mean": m.mean, "variance": m.variance, "count": count}


def ema_errors(model: Any, stats: Mapping[str, Mapping[str, Any]]) -> dict[str, EmaError]:
    """``measure_ema_error`` of every measured layer of ``model`` against ``stats``."""
    out = {}
    for ref in find_batchnorm_layers(model):
        s = stats.get(ref.path)
        if s is None or s["count"] == 0:
            continue
        out[ref.path] = measure_ema_error(
            *_moving(ref.layer), s["mean"], s["variance"], float(ref.layer.epsilon)
        )
    return out


def recalibrate(
    model: Any,
    dataset: Any,
    num_batches: Optional[int] = None,
    progress: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    layers: Optional[Sequence[str]] = None,
    max_passes: Optional[int] = None,
    tolerance: float = 1e-4,
) -> RecalibrationReport:
    """Replace the moving statistics of BatchNormalization layers by their precise statistics.

    Opt-in and explicit: assigns ``moving_mean`` / ``moving_variance`` (no
    other variable changes). Since recalibrating one layer changes what the
    layers after it see at inference, the measurement is repeated after each
    assignment until no layer's statistics move by more than ``tolerance``
    (normalised mean shift and |log variance ratio|), at most ``max_passes``
    passes (default: number of layers + 1; the last pass only confirms). A
    chain of k dependent BN layers needs k + 1 passes; ``max_passes=1`` is a
    single, cheaper, approximate pass. Returns a before/after report.
    """
    refs = _selected(model, layers)
    if not refs:
        return RecalibrationReport([], 0, 0)
    before = [_moving(r.layer) for r in refs]
    limit = max_passes if max_passes is not None else len(refs) + 1
    passes = batches = 0
    counts = [0] * len(refs)
    while passes < limit:
        totals, batches = _measure(
            model, refs, dataset, num_batches, progress and passes == 0, batch_size
        )
        passes += 1
        moved = 0.0
        for i, (ref, m) in enumerate(zip(refs, totals)):
            result = _as_result(m)
            counts[i] = result["count"]
            if result["count"] == 0:
                continue
            layer = ref.layer
            shift, log_ratio = ema_error_channels(
                *_moving(layer),
                result["mean"],
                result["variance"],
                float(layer.epsilon),
            )
            moved = max(moved, float(np.max(shift)), float(np.max(log_ratio)))
            _assign(layer.moving_mean, result["mean"])
            _assign(layer.moving_variance, result["variance"])
        if moved <= tolerance:
            break
    report_layers = [
        layer_recalibration(
            ref.path,
            old_mean,
            old_var,
            *_moving(ref.layer),
            float(ref.layer.epsilon),
            count,
        )
        for ref, (old_mean, old_var), count in zip(refs, before, counts)
        if count > 0
    ]
    return RecalibrationReport(report_layers, batches, passes)


def _moving(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """A layer's (C,) moving mean and variance (tf-keras may keep them broadcast-shaped)."""
    return layer.moving_mean.numpy().ravel().copy(), layer.moving_variance.numpy().ravel().copy()


def _assign(variable: Any, values: np.ndarray) -> None:
    dtype = variable.dtype
    variable.assign(
        np.reshape(values, variable.shape).astype(np.dtype(getattr(dtype, "name", dtype)))
    )


# -- logging during fit --------------------------------------------------------------


class PreciseStatsMonitor(Callback):
    """Logs, per BN layer, how far the EMA is from precise statistics on held-out data.

    Every ``every_n_epochs`` epochs, measures ``precise_stats`` on ``data``
    (at most ``num_batches`` batches; inference mode, no change to the model)
    and writes each layer's ``EmaError`` (fields
    ``EmaError.FIELDS``) as a float32 tensor under
    ``metadata.ema_error_tag(path)`` at the optimizer's step, kind
    ``ema_error``. ``history`` keeps ``(step, {path: EmaError})``; ``findings()``
    applies ``ema_error_finding`` to the latest measurement.
    """

    def __init__(
        self,
        log_dir: Optional[str],
        data: Any,
        num_batches: Optional[int] = None,
        every_n_epochs: int = 1,
        run_name: str = DEFAULT_RUN_NAME,
        batch_size: int = DEFAULT_BATCH_SIZE,
        layers: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        self.log_dir = log_dir
        self.data = data
        self.num_batches = num_batches
        self.every_n_epochs = every_n_epochs
        self.run_name = run_name
        self.batch_size = batch_size
        self.layer_patterns = tuple(layers) if layers is not None else None
        self.history: list[tuple[int, dict[str, EmaError]]] = []
        self._writer = None

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        if self.log_dir is not None and self._writer is None:
            self._writer = SummaryWriter(
                os.path.join(os.fspath(self.log_dir), self.run_name),
                tensorflow=flavour_of(self.model).uses_tensorflow,
            )

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if (epoch + 1) % self.every_n_epochs:
            return
        self.measure()

    def measure(self) -> dict[str, EmaError]:
        """Measure and log now; returns ``{path: EmaError}``."""
        stats = precise_stats(
            self.model,
            self.data,
            self.num_batches,
            progress=False,
            batch_size=self.batch_size,
            layers=self.layer_patterns,
        )
        errors = ema_errors(self.model, stats)
        step = (
            flavour_of(self.model).steps_done(self.model)
            if getattr(self.model, "optimizer", None)
            else 0
        )
        self.history.append((step, errors))
        if self._writer is not None:
            for path, err in errors.items():
                self._writer.write(
                    metadata.ema_error_tag(path),
                    records.ema_error_record(err),
                    step,
                    records.ema_error_content(path),
                )
            self._writer.flush()
        return errors

    def findings(self, **thresholds: float) -> list:
        """``ema-error`` findings for the latest measurement (empty before the first)."""
        if not self.history:
            return []
        step, errors = self.history[-1]
        return ema_error_finding(errors, step=step, **thresholds)

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
