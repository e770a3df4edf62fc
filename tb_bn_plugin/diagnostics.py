"""Diagnostics of BatchNorm train/inference pitfalls: pure functions over ``RunData``.

Each diagnostic is ``f(run, thresholds=Thresholds()) -> list[Finding]``;
``diagnose`` runs them all. Notation: a *trained step* is a logged step with
``info["training"] == 1``; a *trained snapshot* is a per-channel snapshot at a
trained step; "marked mismatch" of batch statistics ``(mu_b, var_b)`` against
reference statistics ``(mu_r, var_r)`` means, in some channel,
``|mu_b - mu_r| / sqrt(var_r + eps) > mismatch_shift`` or
``|log((var_b + eps) / (var_r + eps))| > mismatch_log_var``.

Rules (``Thresholds`` field = default):

``stale-moving-stats`` (error)
    The layer trained (with momentum < 1) at logged steps after the first; at
    every one of them the across-channel summaries of moving_mean and
    moving_variance are unchanged from the previous logged step
    (``max |delta| <= unchanged_rtol = 1e-8`` times the rows' magnitude); and
    at one of them the logged drift (mean_shift, log_var_ratio) shows a marked
    mismatch (``mismatch_shift = 0.5``, ``mismatch_log_var = log 2``). Needs
    two logged steps.
``momentum-one`` (error)
    A trained step with momentum >= 1.
``slow-momentum`` (warning)
    At the latest trained snapshot (step n, momentum m), the EMA still weighs
    its initial value by ``m**n > initial_weight = 0.05`` and the moving
    statistics show a marked mismatch against the average of the batch
    statistics over the trained snapshots of the last ``1/(1-m)`` steps. The
    weight alone does not fire (the initial value may be pretrained
    statistics), nor do moving statistics that do not move at all (still 0/1
    at the latest step, or stale-moving-stats). Needs per-channel snapshots.
``tiny-batch`` (warning)
    A trained step whose batch statistics came from fewer than
    ``min_count = 8`` values per channel.
``replica-batch-too-small`` (warning)
    An unsynchronised layer trained on several replicas (per-replica
    statistics logged, ``LayerSeries.replicas``) normalised over fewer than
    ``min_replica_count = 16`` values per channel on some replica at a logged
    step, or whose replicas' batch means spread by more than
    ``max_replica_mean_spread = 0.5`` of the global batch std (median over
    steps of the mean over channels; about ``1/sqrt(count)`` for evenly
    shuffled independent values, far more for the correlated values of a conv
    feature map from few samples per replica, or for replicas fed differently
    distributed data). Never fires for ``synchronized=True`` layers or
    single-device runs.
``train-inference-gap`` (warning)
    At the latest gap measurement with finite losses,
    ``|inference - train| / max(|train|, loss_floor = 1e-8) > relative_loss_gap = 0.25``
    or some layer's compound gap ``> compound_gap = 0.5``. Names the layers
    whose score (attribution if measured, else local gap, else compound gap)
    is at least ``attribution_share = 0.5`` of the top score.
``frozen-bn`` (info)
    A logged step where the layer normalised with its moving statistics
    during fit (non-trainable, or called with ``training=False``).
``uninitialized-moving-stats`` (error)
    At the latest logged step every channel's moving statistics are within
    ``initial_atol = 1e-6`` of the initial 0 and 1, and the latest trained
    batch statistics show a marked mismatch against 0/1.
``dead-channels`` (warning)
    At the latest snapshot, moving_variance ``< dead_variance = 1e-6`` in a
    channel, or the batch variance at the latest trained snapshot computed
    from more than one value per channel is.
``non-finite`` (error)
    A NaN or Inf in a logged statistic where a value is expected: batch and
    drift statistics at trained steps, every other statistic at every step.
``ema-error`` (warning)
    At the latest ``PreciseStatsMonitor`` measurement, some channel's moving
    statistics mismatch the layer's precise population statistics (same
    mismatch thresholds); recommends ``tb_bn_plugin.recalibrate``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.drift import ema_initial_weight, log_variance_ratio, normalized_mean_shift
from tb_bn_plugin.gap import gap_summary
from tb_bn_plugin.series import LayerSeries, ReplicaSeries, RunData

SEVERITY_ORDER = ("error", "warning", "info")

# Batch and moving statistics: what a layer normalises with in each mode.
_NORMALISING_STATS = (
    metadata.BATCH_MEAN,
    metadata.BATCH_VARIANCE,
    metadata.MOVING_MEAN,
    metadata.MOVING_VARIANCE,
)
# Statistics that only exist at steps where the layer normalised with batch statistics.
_TRAINING_ONLY = frozenset(
    (metadata.BATCH_MEAN, metadata.BATCH_VARIANCE, metadata.MEAN_SHIFT, metadata.LOG_VAR_RATIO)
)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Thresholds of the diagnostics; the module docstring gives each rule."""

    mismatch_shift: float = 0.5
    mismatch_log_var: float = math.log(2.0)
    unchanged_rtol: float = 1e-8
    initial_atol: float = 1e-6
    initial_weight: float = 0.05
    min_count: float = 8
    min_replica_count: float = 16
    max_replica_mean_spread: float = 0.5
    relative_loss_gap: float = 0.25
    compound_gap: float = 0.5
    loss_floor: float = 1e-8
    attribution_share: float = 0.5
    dead_variance: float = 1e-6


@dataclasses.dataclass
class Finding:
    """One diagnosed problem (or notable fact) about a run.

    Attributes:
      code: stable identifier, e.g. ``"stale-moving-stats"``.
      severity: ``"error"``, ``"warning"`` or ``"info"``.
      title: one line.
      layers: affected layer paths, in model order.
      channels: layer path -> affected channel indices (only where known).
      evidence: the numbers behind the finding.
      fix: what the user can do about it.
    """

    code: str
    severity: str
    title: str
    layers: list[str]
    channels: dict[str, list[int]]
    evidence: dict[str, Any]
    fix: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict; non-finite floats become the strings "nan", "inf", "-inf"."""
        return _json_safe(dataclasses.asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    return value


@dataclasses.dataclass(frozen=True)
class _Rule:
    severity: str
    fix: str


_RULES = {
    "stale-moving-stats": _Rule(
        "error",
        "The layer normalised with batch statistics, but its moving_mean and moving_variance "
        "never changed, so model.predict/evaluate (training=False) normalises with statistics "
        "that do not describe the data. In Keras 3 the update is an assignment inside "
        "BatchNormalization.call(training=True); model.fit applies it. A custom train step must "
        "call the model with training=True and keep the result: do not restore or re-assign the "
        "non-trainable weights afterwards (e.g. load_weights or set_weights each step), and with "
        "the JAX backend write back the non_trainable_variables returned by stateless_call. "
        "TF1/tf.compat.v1: run tf.GraphKeys.UPDATE_OPS as control dependencies of the train op "
        "(or pass updates_collections=None).",
    ),
    "momentum-one": _Rule(
        "error",
        "With momentum=1 the update moving = moving*1 + batch*0 never moves the statistics, so "
        "inference keeps the initial (or loaded) values while training normalises with batch "
        "statistics. Use momentum 0.9-0.99 (Keras default 0.99). Keras' momentum is the weight "
        "of the old value, like TF1's decay; PyTorch's momentum is the weight of the new batch "
        "(Keras momentum = 1 - PyTorch momentum). To freeze the statistics on purpose set "
        "layer.trainable = False, which in Keras 3 also normalises with them during training.",
    ),
    "slow-momentum": _Rule(
        "warning",
        "After n updates the moving average keeps momentum**n of its initial value (0 and 1 for "
        "a fresh layer), so with few steps and a momentum close to 1 inference normalises with "
        "statistics far from the batch statistics the model was trained with. Lower momentum "
        "(0.9 for short runs or small data sets; Keras default 0.99, TF1's default decay 0.999 "
        "needs thousands of steps), train longer, or re-estimate the statistics after training: "
        "call model(x, training=True) on a few hundred training batches without applying "
        "gradients (optionally with layer.momentum lowered). When porting from PyTorch, Keras "
        "momentum = 1 - PyTorch momentum.",
    ),
    "tiny-batch": _Rule(
        "warning",
        "Batch statistics computed from so few values per channel are noisy (one value gives "
        "variance 0 and an output equal to beta), so training normalises differently from "
        "inference and the moving statistics average noise. Use larger batches (count = batch "
        "size x spatial positions); drop a small last batch (dataset.batch(n, "
        "drop_remainder=True)); use BatchNormalization(synchronized=True) across replicas; or "
        "replace the layer with keras.layers.GroupNormalization or LayerNormalization, which "
        "do not depend on the batch. When fine-tuning with small batches, freeze the layer "
        "(trainable = False).",
    ),
    "replica-batch-too-small": _Rule(
        "warning",
        "Under tf.distribute each replica of an unsynchronised BatchNormalization layer "
        "normalises with the statistics of its own share of the global batch, so the effective "
        "BN batch is the per-replica batch, however large the global one: noisy statistics, a "
        "larger train/inference gap, and moving statistics that follow the first replica's "
        "share only. Use BatchNormalization(synchronized=True), which normalises with the "
        "global batch statistics (one all-reduce per layer and step), or a larger per-replica "
        "batch (global batch = per-replica batch x replicas), or GroupNormalization, which "
        "does not depend on the batch.",
    ),
    "train-inference-gap": _Rule(
        "warning",
        "The probe batch's loss differs markedly between training=True and training=False. "
        "Look at the other findings for the named layers (stale, slow or uninitialised moving "
        "statistics, tiny batches) and at their batch vs moving statistics. Typical remedies: "
        "lower the momentum or re-estimate the moving statistics on training batches with "
        "model(x, training=True), use larger batches or GroupNormalization, and make sure the "
        "evaluation data is preprocessed like the training data. Other mode-dependent layers "
        "(Dropout, GaussianNoise) also contribute to the model-level gap; the per-layer "
        "attribution separates them.",
    ),
    "frozen-bn": _Rule(
        "info",
        "In Keras 3 a BatchNormalization layer with trainable = False runs in inference mode "
        "(fine-tuning semantics): it normalises with its moving statistics during fit and does "
        "not update them; calling a model with training=False does the same. This is what you "
        "want when fine-tuning a pretrained base on small batches. It is a problem when the "
        "moving statistics do not fit the new data (a freshly initialised layer has 0 and 1): "
        "then set trainable = True on the BatchNormalization layers, or unfreeze after a "
        "warm-up, and recompile the model after changing trainable.",
    ),
    "uninitialized-moving-stats": _Rule(
        "error",
        "Inference would normalise with the initial moving statistics (mean 0, variance 1), "
        "i.e. hardly at all, while the batch statistics are far from them: the output at "
        "training=False is unnormalised. Causes: the model is evaluated before its BN layers "
        "were trained, the moving-statistic updates never ran (see stale-moving-stats and "
        "momentum-one), or the weights were restored without the non-trainable BN variables. "
        "Train with training=True and updates applied, and save/load the full model "
        "(model.save('*.keras') or save_weights/load_weights, which include "
        "moving_mean/moving_variance) instead of copying only trainable_weights.",
    ),
    "dead-channels": _Rule(
        "warning",
        "These channels have (almost) no variance: training normalises them to about beta, and "
        "at inference 1/sqrt(moving_variance + epsilon) amplifies any later deviation by up to "
        "1/sqrt(epsilon). This is legitimate when the input channel is constant, but then the "
        "channel carries no information: check the preceding layer (dead ReLU units, too high a "
        "learning rate, zero padding or a constant input feature). If one-value batches "
        "collapsed the moving variance, see tiny-batch; a larger epsilon limits the "
        "amplification.",
    ),
    "non-finite": _Rule(
        "error",
        "NaN or Inf in BatchNorm statistics: training diverged or the input contains NaN/Inf. "
        "Once a moving statistic is NaN every inference output of the layer is NaN. Check the "
        "inputs, lower the learning rate or clip gradients (optimizer clipnorm), use loss "
        "scaling with mixed precision (keras.mixed_precision.LossScaleOptimizer), and stop "
        "early with keras.callbacks.TerminateOnNaN.",
    ),
}


def _finding(
    code: str,
    title: str,
    layers: list[str],
    evidence: dict[str, Any],
    channels: Optional[dict[str, list[int]]] = None,
) -> Finding:
    rule = _RULES[code]
    return Finding(code, rule.severity, title, layers, channels or {}, evidence, rule.fix)


def _info(layer: LayerSeries, field: str, default: float) -> np.ndarray:
    """(S,) one info field, ``default`` where it was not logged."""
    values = layer.info.get(field)
    if values is None:
        return np.full(len(layer.steps), default, dtype=np.float64)
    return np.asarray(values, dtype=np.float64)


def _trained(layer: LayerSeries) -> np.ndarray:
    return _info(layer, "training", 0.0) > 0.5


def _momentum(layer: LayerSeries) -> np.ndarray:
    return _info(layer, "momentum", layer.config.momentum)


def _at_channel_steps(layer: LayerSeries, values: np.ndarray) -> np.ndarray:
    """(T,) per-step ``values`` at the per-channel snapshot steps (NaN where not logged)."""
    position = {int(step): i for i, step in enumerate(layer.steps)}
    return np.array(
        [values[position[int(s)]] if int(s) in position else np.nan for s in layer.channel_steps],
        dtype=np.float64,
    )


def _snapshot_trained(layer: LayerSeries) -> np.ndarray:
    return _at_channel_steps(layer, _trained(layer).astype(np.float64)) > 0.5


def _columns(layer: LayerSeries, stat: str, columns: tuple[str, ...]) -> np.ndarray:
    """(S, len(columns)) summary columns of ``stat``; NaN when the stat was not logged."""
    if stat not in layer.summary:
        return np.full((len(layer.steps), len(columns)), np.nan)
    index = [metadata.SUMMARY_COLUMNS.index(c) for c in columns]
    return np.asarray(layer.summary[stat], dtype=np.float64)[:, index]


def _extreme(layer: LayerSeries, stat: str) -> np.ndarray:
    """(S,) largest absolute value of ``stat`` over channels (from the min/max columns)."""
    return np.max(np.abs(_columns(layer, stat, ("min", "max"))), axis=1)


def _marked(shift: np.ndarray, log_var: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Where batch statistics differ markedly from reference ones (NaN never does)."""
    return (np.asarray(shift) > thresholds.mismatch_shift) | (
        np.abs(np.asarray(log_var)) > thresholds.mismatch_log_var
    )


def _mismatch(
    batch_mean: np.ndarray,
    batch_variance: np.ndarray,
    ref_mean: np.ndarray | float,
    ref_variance: np.ndarray | float,
    epsilon: float,
    thresholds: Thresholds,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel shift, log variance ratio and marked-mismatch mask against references."""
    shift = normalized_mean_shift(batch_mean, ref_mean, ref_variance, epsilon)
    log_var = log_variance_ratio(batch_variance, ref_variance, epsilon)
    return shift, log_var, _marked(shift, log_var, thresholds)


def _has_channels(layer: LayerSeries, *stats: str) -> bool:
    return len(layer.channel_steps) > 0 and all(s in layer.channels for s in stats)


def _latest_trained_batch_stats(
    layer: LayerSeries,
) -> Optional[tuple[int, np.ndarray, np.ndarray, bool]]:
    """(step, batch_mean, batch_variance, per_channel) at the latest trained snapshot.

    Falls back to the min/max summary columns at the latest trained step
    (``per_channel=False``), which bound every channel's value.
    """
    if _has_channels(layer, metadata.BATCH_MEAN, metadata.BATCH_VARIANCE):
        snapshots = np.flatnonzero(_snapshot_trained(layer))
        if snapshots.size:
            t = snapshots[-1]
            return (
                int(layer.channel_steps[t]),
                layer.channels[metadata.BATCH_MEAN][t],
                layer.channels[metadata.BATCH_VARIANCE][t],
                True,
            )
    steps = np.flatnonzero(_trained(layer))
    if not steps.size:
        return None
    i = steps[-1]
    bounds = ("min", "max")
    return (
        int(layer.steps[i]),
        _columns(layer, metadata.BATCH_MEAN, bounds)[i],
        _columns(layer, metadata.BATCH_VARIANCE, bounds)[i],
        False,
    )


def _moving_at_initial(layer: LayerSeries, atol: float) -> np.ndarray:
    """(S,) whether every channel's moving statistics are within ``atol`` of 0 and 1."""
    bounds = ("min", "max")
    mean = _columns(layer, metadata.MOVING_MEAN, bounds)
    variance = _columns(layer, metadata.MOVING_VARIANCE, bounds)
    return np.all(np.abs(mean) <= atol, axis=1) & np.all(np.abs(variance - 1.0) <= atol, axis=1)


def _layer_index(run: RunData) -> dict[str, int]:
    return {layer.config.path: layer.config.index for layer in run.layers.values()}


def _indices(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]


def _stale_evidence(layer: LayerSeries, thresholds: Thresholds) -> Optional[dict[str, Any]]:
    """Evidence of ``stale-moving-stats`` for one layer, or None when the rule does not hold."""
    trained, momentum = _trained(layer), _momentum(layer)
    if len(layer.steps) < 2 or (momentum[trained] >= 1).any():
        return None  # nothing to compare, or momentum-one's case
    checked = trained[1:]
    shift = _extreme(layer, metadata.MEAN_SHIFT)[1:][checked]
    log_var = _extreme(layer, metadata.LOG_VAR_RATIO)[1:][checked]
    if not _marked(shift, log_var, thresholds).any():
        return None
    moving = np.concatenate(
        [
            _columns(layer, stat, metadata.SUMMARY_COLUMNS)
            for stat in (metadata.MOVING_MEAN, metadata.MOVING_VARIANCE)
        ],
        axis=1,
    )
    change = np.max(np.abs(np.diff(moving, axis=0)), axis=1)[checked]
    magnitude = np.max(np.abs(moving), axis=1)
    scale = np.maximum(magnitude[1:], magnitude[:-1])[checked]
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(change == 0, 0.0, change / scale)
    if not np.all(relative <= thresholds.unchanged_rtol):
        return None  # updated somewhere (NaN counts as changed: non-finite's case)
    return {
        "momentum": float(momentum[trained][-1]),
        "trained_steps_checked": int(checked.sum()),
        "first_step": int(layer.steps[0]),
        "last_step": int(layer.steps[-1]),
        "max_relative_change": float(np.max(relative)),
        "max_mean_shift": float(np.nanmax(shift)),
        "max_abs_log_var_ratio": float(np.nanmax(log_var)),
        "at_initial_values": bool(_moving_at_initial(layer, thresholds.initial_atol).all()),
    }


def stale_moving_stats(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``stale-moving-stats``: the layer trains but its moving statistics never change."""
    findings = []
    for layer in run.ordered_layers():
        evidence = _stale_evidence(layer, thresholds)
        if evidence is not None:
            findings.append(
                _finding(
                    "stale-moving-stats",
                    "moving statistics never change although the layer trained at "
                    f"{evidence['trained_steps_checked']} logged steps",
                    [layer.config.path],
                    evidence,
                )
            )
    return findings


def momentum_one(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``momentum-one``: the layer trains with momentum >= 1: its moving statistics are frozen."""
    findings = []
    for layer in run.ordered_layers():
        momentum = _momentum(layer)
        hit = _trained(layer) & (momentum >= 1)
        if hit.any():
            findings.append(
                _finding(
                    "momentum-one",
                    f"momentum is {momentum[hit][-1]:g}: moving statistics never update",
                    [layer.config.path],
                    {
                        "momentum": float(momentum[hit][-1]),
                        "affected_steps": int(hit.sum()),
                        "first_step": int(layer.steps[hit][0]),
                    },
                )
            )
    return findings


def _not_updating(layer: LayerSeries, thresholds: Thresholds) -> bool:
    """Moving statistics that do not move at all: stale or still at 0/1, not slow."""
    return bool(_moving_at_initial(layer, thresholds.initial_atol)[-1]) or (
        _stale_evidence(layer, thresholds) is not None
    )


def slow_momentum(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``slow-momentum``: the EMA still weighs its initial value and lags the batch statistics."""
    findings = []
    for layer in run.ordered_layers():
        if not _has_channels(layer, *_NORMALISING_STATS):
            continue
        snapshots = _snapshot_trained(layer)
        if not snapshots.any():
            continue
        t = int(np.flatnonzero(snapshots)[-1])
        steps_done = int(layer.channel_steps[t])
        momentum = float(_at_channel_steps(layer, _momentum(layer))[t])
        if not 0.0 < momentum < 1.0:
            continue
        weight = float(ema_initial_weight(momentum, steps_done))
        if weight <= thresholds.initial_weight or _not_updating(layer, thresholds):
            continue
        window = snapshots & (layer.channel_steps > steps_done - 1.0 / (1.0 - momentum))
        shift, log_var, lagging = _mismatch(
            np.mean(layer.channels[metadata.BATCH_MEAN][window], axis=0),
            np.mean(layer.channels[metadata.BATCH_VARIANCE][window], axis=0),
            layer.channels[metadata.MOVING_MEAN][t],
            layer.channels[metadata.MOVING_VARIANCE][t],
            layer.config.epsilon,
            thresholds,
        )
        if not lagging.any():
            continue
        path = layer.config.path
        findings.append(
            _finding(
                "slow-momentum",
                f"momentum {momentum:g} after {steps_done} steps: the moving statistics still "
                f"weigh their initial value by {weight:.0%} and lag the batch statistics",
                [path],
                {
                    "momentum": momentum,
                    "steps": steps_done,
                    "initial_weight": weight,
                    "initial_weight_threshold": thresholds.initial_weight,
                    "steps_needed": math.ceil(
                        math.log(thresholds.initial_weight) / math.log(momentum)
                    ),
                    "reference_snapshots": int(window.sum()),
                    "max_lag_mean_shift": float(np.nanmax(shift)),
                    "max_lag_abs_log_var_ratio": float(np.nanmax(np.abs(log_var))),
                    "lagging_channels": int(lagging.sum()),
                },
                {path: _indices(lagging)},
            )
        )
    return findings


def tiny_batch(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``tiny-batch``: batch statistics from fewer than ``min_count`` values per channel."""
    findings = []
    for layer in run.ordered_layers():
        trained = _trained(layer)
        counts = _info(layer, "count", np.nan)[trained]
        small = counts < thresholds.min_count
        if not small.any():
            continue
        evidence: dict[str, Any] = {
            "min_count": float(np.nanmin(counts)),
            "median_count": float(np.nanmedian(counts)),
            "small_batch_steps": int(small.sum()),
            "trained_steps": int(trained.sum()),
            "count_threshold": thresholds.min_count,
        }
        if _has_channels(layer, metadata.BATCH_VARIANCE):
            variance = layer.channels[metadata.BATCH_VARIANCE][_snapshot_trained(layer)]
            if variance.size:
                near_zero = variance < thresholds.dead_variance
                evidence["near_zero_variance_fraction"] = float(np.mean(near_zero))
            if len(variance) >= 2:
                with np.errstate(divide="ignore", invalid="ignore"):
                    spread = np.std(variance, axis=0) / np.mean(variance, axis=0)
                spread = spread[np.isfinite(spread)]
                if spread.size:
                    evidence["batch_variance_cv"] = float(np.median(spread))
        findings.append(
            _finding(
                "tiny-batch",
                f"batch statistics computed from as few as {evidence['min_count']:g} values per "
                "channel",
                [layer.config.path],
                evidence,
            )
        )
    return findings


def replica_mean_spread(replicas: ReplicaSeries, epsilon: float) -> np.ndarray:
    """(P, C) std of the replicas' batch means over the global batch std ``sqrt(var + eps)``."""
    global_variance = replicas.global_moments().variance
    return np.std(replicas.mean, axis=1) / np.sqrt(global_variance + epsilon)


def replica_batch_too_small(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``replica-batch-too-small``: an unsynchronised layer normalises over small per-replica batches."""
    findings = []
    for layer in run.ordered_layers():
        replicas = layer.replicas
        if layer.config.synchronized or replicas is None or replicas.replicas < 2 or not len(replicas.steps):
            continue
        smallest = replicas.count.min(axis=1)
        spread = float(np.median(np.mean(replica_mean_spread(replicas, layer.config.epsilon), axis=1)))
        small = smallest < thresholds.min_replica_count
        # Values of a conv feature map are correlated: many values per channel from few samples
        # still give replica means that disagree far beyond 1/sqrt(count).
        spread_out = spread > thresholds.max_replica_mean_spread
        if not (small.any() or spread_out):
            continue
        per_replica = float(np.median(smallest))
        evidence = {
            "replicas": replicas.replicas,
            "per_replica_count": per_replica,
            "min_per_replica_count": float(smallest.min()),
            "global_count": float(np.median(replicas.count.sum(axis=1))),
            "small_steps": int(small.sum()),
            "replica_steps": len(replicas.steps),
            "count_threshold": thresholds.min_replica_count,
            "replica_mean_spread": spread,
            "iid_mean_spread": 1.0 / math.sqrt(per_replica) if per_replica > 0 else math.inf,
            "spread_threshold": thresholds.max_replica_mean_spread,
        }
        reason = (
            f"normalises over {per_replica:g} values per channel"
            if small.any()
            else f"has batch means {evidence['replica_mean_spread']:.2g} global std apart from the others' "
            f"(sampling noise alone: about {evidence['iid_mean_spread']:.2g})"
        )
        findings.append(
            _finding(
                "replica-batch-too-small",
                f"unsynchronised: each of {replicas.replicas} replicas {reason} "
                f"(global batch {evidence['global_count']:g} values per channel)",
                [layer.config.path],
                evidence,
            )
        )
    return findings


def train_inference_gap(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``train-inference-gap``: the probe batch behaves markedly differently in inference mode."""
    summary = None if run.gap is None else gap_summary(run.gap, thresholds.loss_floor)
    if summary is None:
        return []
    max_compound = max(summary.compound.values(), default=0.0)
    loss_gap = summary.relative_loss_gap > thresholds.relative_loss_gap
    if not (loss_gap or max_compound > thresholds.compound_gap):
        return []
    basis, scores = next(
        (
            (name, scores)
            for name, scores in (
                ("attribution", summary.attribution),
                ("local", summary.local),
                ("compound", summary.compound),
            )
            if scores
        ),
        ("none", {}),
    )
    cutoff = thresholds.attribution_share * max(scores.values(), default=0.0)
    index = _layer_index(run)
    named = sorted(
        (p for p, score in scores.items() if cutoff > 0 and score >= cutoff),
        key=lambda p: (index.get(p, math.inf), p),
    )
    title = (
        f"inference-mode loss differs from training-mode loss by {summary.relative_loss_gap:.0%}"
        if loss_gap
        else f"layer outputs differ by up to {max_compound:.0%} (RMS) between modes"
    )
    evidence: dict[str, Any] = {
        "step": summary.step,
        "train_loss": summary.train_loss,
        "inference_loss": summary.inference_loss,
        "relative_loss_gap": summary.relative_loss_gap,
        "max_compound_gap": max_compound,
        "ranking": basis,
        **{f"{basis}/{p}": scores[p] for p in named},
    }
    return [_finding("train-inference-gap", title, named, evidence)]


def frozen_bn(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``frozen-bn``: the layer normalised with its moving statistics during fit."""
    findings = []
    for layer in run.ordered_layers():
        inference = ~_trained(layer)
        if not inference.any():
            continue
        frozen = _info(layer, "trainable", 1.0) < 0.5
        reason = "non-trainable" if frozen.any() else "called with training=False"
        findings.append(
            _finding(
                "frozen-bn",
                f"{reason}: normalises with its moving statistics during fit",
                [layer.config.path],
                {
                    "logged_steps": len(layer.steps),
                    "inference_mode_steps": int(inference.sum()),
                    "non_trainable_steps": int(frozen.sum()),
                    "first_inference_mode_step": int(layer.steps[inference][0]),
                },
            )
        )
    return findings


def uninitialized_moving_stats(
    run: RunData, thresholds: Thresholds = Thresholds()
) -> list[Finding]:
    """``uninitialized-moving-stats``: inference would normalise with the initial 0/1 statistics."""
    findings = []
    for layer in run.ordered_layers():
        if not len(layer.steps) or not _moving_at_initial(layer, thresholds.initial_atol)[-1]:
            continue
        latest = _latest_trained_batch_stats(layer)
        if latest is None:
            continue
        batch_step, batch_mean, batch_variance, per_channel = latest
        shift, log_var, marked = _mismatch(
            batch_mean, batch_variance, 0.0, 1.0, layer.config.epsilon, thresholds
        )
        if not marked.any():
            continue
        path = layer.config.path
        evidence: dict[str, Any] = {
            "step": int(layer.steps[-1]),
            "batch_step": batch_step,
            "max_mean_shift": float(np.nanmax(shift)),
            "max_abs_log_var_ratio": float(np.nanmax(np.abs(log_var))),
        }
        if per_channel:
            evidence["mismatched_channels"] = int(marked.sum())
        findings.append(
            _finding(
                "uninitialized-moving-stats",
                "inference would normalise with the initial moving statistics (mean 0, variance 1)",
                [path],
                evidence,
                {path: _indices(marked)} if per_channel else None,
            )
        )
    return findings


def dead_channels(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``dead-channels``: channels whose moving or batch variance collapsed to about zero."""
    findings = []
    for layer in run.ordered_layers():
        if not _has_channels(layer, metadata.MOVING_VARIANCE):
            continue
        moving_variance = layer.channels[metadata.MOVING_VARIANCE][-1]
        dead_moving = moving_variance < thresholds.dead_variance
        dead_batch = np.zeros_like(dead_moving)
        evidence: dict[str, Any] = {"step": int(layer.channel_steps[-1])}
        if _has_channels(layer, metadata.BATCH_VARIANCE):
            counts = _at_channel_steps(layer, _info(layer, "count", np.nan))
            usable = np.flatnonzero(_snapshot_trained(layer) & (counts > 1))
            if usable.size:
                t = usable[-1]
                dead_batch = layer.channels[metadata.BATCH_VARIANCE][t] < thresholds.dead_variance
                evidence["batch_step"] = int(layer.channel_steps[t])
        dead = dead_moving | dead_batch
        if not dead.any():
            continue
        path = layer.config.path
        evidence.update(
            dead_channels=int(dead.sum()),
            dead_in_moving_variance=int(dead_moving.sum()),
            dead_in_batch_variance=int(dead_batch.sum()),
            min_moving_variance=float(np.nanmin(moving_variance)),
            epsilon=layer.config.epsilon,
            variance_threshold=thresholds.dead_variance,
        )
        findings.append(
            _finding(
                "dead-channels",
                f"{int(dead.sum())} of {dead.size} channels have (almost) zero variance",
                [path],
                evidence,
                {path: _indices(dead)},
            )
        )
    return findings


def _non_finite_rows(values: dict[str, np.ndarray], trained: np.ndarray) -> dict[str, np.ndarray]:
    """stat -> (N, K) mask of non-finite entries where a value is expected."""
    masks = {}
    for stat, rows in values.items():
        expected = trained if stat in _TRAINING_ONLY else np.ones_like(trained)
        masks[stat] = ~np.isfinite(np.asarray(rows, dtype=np.float64)) & expected[:, None]
    return {stat: mask for stat, mask in masks.items() if mask.any()}


def _steps_with(steps: np.ndarray, masks: dict[str, np.ndarray]) -> set[int]:
    """The steps at which any of the (N, K) ``masks`` is set."""
    return {int(steps[i]) for mask in masks.values() for i in np.flatnonzero(mask.any(axis=1))}


def ema_error(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``ema-error``: the EMA is off the precise population statistics (see module docstring)."""
    from tb_bn_plugin.population import EmaError, ema_error_finding

    if not run.ema_error:
        return []
    order = _layer_index(run)
    latest = {
        path: (int(steps[-1]), EmaError(*(float(v) for v in values[-1])))
        for path, (steps, values) in sorted(run.ema_error.items(), key=lambda kv: order.get(kv[0], math.inf))
        if len(steps)
    }
    return ema_error_finding(
        {path: error for path, (_, error) in latest.items()},
        max_mean_shift=thresholds.mismatch_shift,
        max_abs_log_var=thresholds.mismatch_log_var,
        step=max((step for step, _ in latest.values()), default=None),
    )


def non_finite(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``non-finite``: NaN/Inf where a statistic should have a value."""
    findings = []
    for layer in run.ordered_layers():
        in_summary = _non_finite_rows(layer.summary, _trained(layer))
        in_channels = _non_finite_rows(layer.channels, _snapshot_trained(layer))
        if not (in_summary or in_channels):
            continue
        bad_steps = _steps_with(layer.steps, in_summary)
        bad_steps |= _steps_with(layer.channel_steps, in_channels)
        bad_channels = np.zeros(layer.config.channels, dtype=bool)
        for mask in in_channels.values():
            bad_channels |= mask.any(axis=0)
        path = layer.config.path
        stats = sorted(set(in_summary) | set(in_channels))
        findings.append(
            _finding(
                "non-finite",
                f"NaN/Inf in {', '.join(stats)} from step {min(bad_steps)}",
                [path],
                {
                    "stats": ", ".join(stats),
                    "first_step": min(bad_steps),
                    "non_finite_steps": len(bad_steps),
                    "non_finite_channels": int(bad_channels.sum()),
                },
                {path: _indices(bad_channels)} if bad_channels.any() else None,
            )
        )
    return findings


DIAGNOSTICS: tuple[Callable[[RunData, Thresholds], list[Finding]], ...] = (
    stale_moving_stats,
    momentum_one,
    slow_momentum,
    tiny_batch,
    replica_batch_too_small,
    train_inference_gap,
    frozen_bn,
    uninitialized_moving_stats,
    dead_channels,
    non_finite,
    ema_error,
)


def diagnose(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """All findings for ``run``, sorted by severity (``SEVERITY_ORDER``), model order and code."""
    index = _layer_index(run)
    findings = [f for diagnostic in DIAGNOSTICS for f in diagnostic(run, thresholds)]
    return sorted(
        findings,
        key=lambda f: (
            SEVERITY_ORDER.index(f.severity),
            min((index.get(p, math.inf) for p in f.layers), default=-1),
            f.code,
        ),
    )
