"""Rules about the logged values themselves: collapsed variances, NaN and Inf."""

from __future__ import annotations

from typing import Any

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.diagnostics import layer_view as view
from tb_bn_plugin.diagnostics.finding import Finding, Rule
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.series import RunData

DEAD_CHANNELS = Rule(
    "dead-channels",
    "warning",
    "These channels have (almost) no variance: training normalises them to about beta, and "
    "at inference 1/sqrt(moving_variance + epsilon) amplifies any later deviation by up to "
    "1/sqrt(epsilon). This is legitimate when the input channel is constant, but then the "
    "channel carries no information: check the preceding layer (dead ReLU units, too high a "
    "learning rate, zero padding or a constant input feature). If one-value batches "
    "collapsed the moving variance, see tiny-batch; a larger epsilon limits the "
    "amplification.",
)


NON_FINITE = Rule(
    "non-finite",
    "error",
    "NaN or Inf in BatchNorm statistics: training diverged or the input contains NaN/Inf. "
    "Once a moving statistic is NaN every inference output of the layer is NaN. Check the "
    "inputs, lower the learning rate or clip gradients (optimizer clipnorm), use loss "
    "scaling with mixed precision (keras.mixed_precision.LossScaleOptimizer), and stop "
    "early with keras.callbacks.TerminateOnNaN.",
)


# Statistics that only exist at steps where the layer normalised with batch statistics.
_TRAINING_ONLY = frozenset(
    (metadata.BATCH_MEAN, metadata.BATCH_VARIANCE, metadata.MEAN_SHIFT, metadata.LOG_VAR_RATIO)
)


def dead_channels(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``dead-channels``: channels whose moving or batch variance collapsed to about zero."""
    findings = []
    for layer in run.ordered_layers():
        if not view.has_channels(layer, metadata.MOVING_VARIANCE):
            continue
        moving_variance = layer.channels[metadata.MOVING_VARIANCE][-1]
        dead_moving = moving_variance < thresholds.dead_variance
        dead_batch = np.zeros_like(dead_moving)
        evidence: dict[str, Any] = {"step": int(layer.channel_steps[-1])}
        if view.has_channels(layer, metadata.BATCH_VARIANCE):
            counts = view.at_channel_steps(layer, view.info(layer, "count", np.nan))
            usable = np.flatnonzero(view.snapshot_trained(layer) & (counts > 1))
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
            DEAD_CHANNELS.finding(
                f"{int(dead.sum())} of {dead.size} channels have (almost) zero variance",
                [path],
                evidence,
                {path: view.indices(dead)},
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


def _all_finite(*values: dict[str, np.ndarray]) -> bool:
    """Whether no entry of the ``values`` dicts is NaN or Inf, in one pass over all of them.

    Healthy layers (nearly all) skip ``non_finite``'s exact, per-statistic check.
    """
    arrays = [v.reshape(-1) for by_stat in values for v in by_stat.values()]
    return not arrays or bool(np.isfinite(np.concatenate(arrays)).all())


def _steps_with(steps: np.ndarray, masks: dict[str, np.ndarray]) -> set[int]:
    """The steps at which any of the (N, K) ``masks`` is set."""
    return {int(steps[i]) for mask in masks.values() for i in np.flatnonzero(mask.any(axis=1))}


def non_finite(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``non-finite``: NaN/Inf where a statistic should have a value."""
    findings = []
    for layer in run.ordered_layers():
        if _all_finite(layer.summary, layer.channels):
            continue
        in_summary = _non_finite_rows(layer.summary, view.trained(layer))
        in_channels = _non_finite_rows(layer.channels, view.snapshot_trained(layer))
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
            NON_FINITE.finding(
                f"NaN/Inf in {', '.join(stats)} from step {min(bad_steps)}",
                [path],
                {
                    "stats": ", ".join(stats),
                    "first_step": min(bad_steps),
                    "non_finite_steps": len(bad_steps),
                    "non_finite_channels": int(bad_channels.sum()),
                },
                {path: view.indices(bad_channels)} if bad_channels.any() else None,
            )
        )
    return findings
