"""Rules about the moving statistics: stale, frozen by momentum 1, inverted, slow, uninitialised."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.diagnostics import layer_view as view
from tb_bn_plugin.diagnostics.finding import Finding, Rule
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.numerics.drift import ema_initial_weight
from tb_bn_plugin.series import LayerSeries, RunData

STALE_MOVING_STATS = Rule(
    "stale-moving-stats",
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
)


MOMENTUM_ONE = Rule(
    "momentum-one",
    "error",
    "With momentum=1 (TF1: decay=1) the update moving = momentum * moving + (1 - momentum) * "
    "batch never moves the moving mean and variance, so inference keeps their initial (0 and "
    "1) or loaded values while training normalises with batch statistics. It shows as "
    "momentum 1 in the logged statistics or as the momentum constant of the graph's update "
    "ops. Use momentum 0.9-0.99: 0.99 (the Keras default) for long runs, 0.9 or lower when "
    "training for few steps; check where the value comes from (a decay/momentum argument, or "
    "a schedule that reached 1). Keras' momentum is the weight of the old value, like TF1's "
    "decay; PyTorch's momentum is the weight of the new batch (Keras momentum = 1 - PyTorch "
    "momentum). To freeze the statistics on purpose set layer.trainable = False, which in "
    "Keras 3 also normalises with them during training.",
)


INVERTED_MOMENTUM = Rule(
    "inverted-momentum",
    "warning",
    "Keras' momentum is the weight of the old moving value: moving = momentum * moving + "
    "(1 - momentum) * batch. PyTorch's momentum is the weight of the new batch, so "
    "PyTorch's default 0.1 copied into Keras gives moving statistics that average only the "
    "last one or two batches: inference normalises with the noise of the latest batches "
    "instead of the data's statistics. Convert: Keras momentum = 1 - PyTorch momentum "
    "(PyTorch 0.1 -> BatchNormalization(momentum=0.9); Keras default 0.99).",
)


SLOW_MOMENTUM = Rule(
    "slow-momentum",
    "warning",
    "After n updates the moving average keeps momentum**n of its initial value (0 and 1 for "
    "a fresh layer), so with few steps and a momentum close to 1 inference normalises with "
    "statistics far from the batch statistics the model was trained with. Lower momentum "
    "(0.9 for short runs or small data sets; Keras default 0.99, TF1's default decay 0.999 "
    "needs thousands of steps), train longer, or re-estimate the statistics after training: "
    "call model(x, training=True) on a few hundred training batches without applying "
    "gradients (optionally with layer.momentum lowered). When porting from PyTorch, Keras "
    "momentum = 1 - PyTorch momentum.",
)


UNINITIALIZED_MOVING_STATS = Rule(
    "uninitialized-moving-stats",
    "error",
    "Inference would normalise with the initial moving statistics (mean 0, variance 1), "
    "i.e. hardly at all, while the batch statistics are far from them: the output at "
    "training=False is unnormalised. Causes: the model is evaluated before its BN layers "
    "were trained, the moving-statistic updates never ran (see stale-moving-stats and "
    "momentum-one), or the weights were restored without the non-trainable BN variables. "
    "Train with training=True and updates applied, and save/load the full model "
    "(model.save('*.keras') or save_weights/load_weights, which include "
    "moving_mean/moving_variance) instead of copying only trainable_weights.",
)


# Batch and moving statistics: what a layer normalises with in each mode.
_NORMALISING_STATS = (
    metadata.BATCH_MEAN,
    metadata.BATCH_VARIANCE,
    metadata.MOVING_MEAN,
    metadata.MOVING_VARIANCE,
)


def _stale_evidence(layer: LayerSeries, thresholds: Thresholds) -> Optional[dict[str, Any]]:
    """Evidence of ``stale-moving-stats`` for one layer, or None when the rule does not hold."""
    trained, momentum = view.trained(layer), view.momentum(layer)
    if len(layer.steps) < 2 or (momentum[trained] >= 1).any():
        return None  # nothing to compare, or momentum-one's case
    checked = trained[1:]
    shift = view.extreme(layer, metadata.MEAN_SHIFT)[1:][checked]
    log_var = view.extreme(layer, metadata.LOG_VAR_RATIO)[1:][checked]
    if not view.marked(shift, log_var, thresholds).any():
        return None
    moving = np.concatenate(
        [
            view.columns(layer, stat, metadata.SUMMARY_COLUMNS)
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
        "at_initial_values": bool(view.moving_at_initial(layer, thresholds.initial_atol).all()),
    }


def stale_moving_stats(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``stale-moving-stats``: the layer trains but its moving statistics never change."""
    findings = []
    for layer in run.ordered_layers():
        evidence = _stale_evidence(layer, thresholds)
        if evidence is not None:
            findings.append(
                STALE_MOVING_STATS.finding(
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
        momentum = view.momentum(layer)
        hit = view.trained(layer) & (momentum >= 1)
        if hit.any():
            findings.append(
                MOMENTUM_ONE.finding(
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


def inverted_momentum(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``inverted-momentum``: a trained step with momentum below ``inverted_momentum``.

    An EMA with momentum m weighs the batch k steps back by ``(1 - m) * m**k``:
    it averages over about ``1 / (1 - m)`` batches, fewer than 2 below 0.5.
    """
    findings = []
    for layer in run.ordered_layers():
        momentum = view.momentum(layer)
        hit = view.trained(layer) & (momentum < thresholds.inverted_momentum)
        if not hit.any():
            continue
        value = float(momentum[hit][-1])
        findings.append(
            INVERTED_MOMENTUM.finding(
                f"momentum is {value:g}: the moving statistics average about "
                f"{1.0 / (1.0 - value):.2g} batches (PyTorch convention?); use {1.0 - value:g}",
                [layer.config.path],
                {
                    "momentum": value,
                    "keras_momentum_if_pytorch": 1.0 - value,
                    "batches_averaged": 1.0 / (1.0 - value),
                    "affected_steps": int(hit.sum()),
                    "momentum_threshold": thresholds.inverted_momentum,
                },
            )
        )
    return findings


def _not_updating(layer: LayerSeries, thresholds: Thresholds) -> bool:
    """Moving statistics that do not move at all: stale or still at 0/1, not slow."""
    return bool(view.moving_at_initial(layer, thresholds.initial_atol)[-1]) or (
        _stale_evidence(layer, thresholds) is not None
    )


def slow_momentum(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``slow-momentum``: the EMA still weighs its initial value and lags the batch statistics."""
    findings = []
    for layer in run.ordered_layers():
        if not view.has_channels(layer, *_NORMALISING_STATS):
            continue
        snapshots = view.snapshot_trained(layer)
        if not snapshots.any():
            continue
        t = int(np.flatnonzero(snapshots)[-1])
        steps_done = int(layer.channel_steps[t])
        momentum = float(view.at_channel_steps(layer, view.momentum(layer))[t])
        if not 0.0 < momentum < 1.0:
            continue
        weight = float(ema_initial_weight(momentum, steps_done))
        if weight <= thresholds.initial_weight or _not_updating(layer, thresholds):
            continue
        window = snapshots & (layer.channel_steps > steps_done - 1.0 / (1.0 - momentum))
        shift, log_var, lagging = view.mismatch(
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
            SLOW_MOMENTUM.finding(
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
                {path: view.indices(lagging)},
            )
        )
    return findings


def uninitialized_moving_stats(
    run: RunData, thresholds: Thresholds = Thresholds()
) -> list[Finding]:
    """``uninitialized-moving-stats``: inference would normalise with the initial 0/1 statistics."""
    findings = []
    for layer in run.ordered_layers():
        if not len(layer.steps) or not view.moving_at_initial(layer, thresholds.initial_atol)[-1]:
            continue
        latest = view.latest_trained_batch_stats(layer)
        if latest is None:
            continue
        batch_step, batch_mean, batch_variance, per_channel = latest
        shift, log_var, marked = view.mismatch(
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
            UNINITIALIZED_MOVING_STATS.finding(
                "inference would normalise with the initial moving statistics (mean 0, variance 1)",
                [path],
                evidence,
                {path: view.indices(marked)} if per_channel else None,
            )
        )
    return findings
