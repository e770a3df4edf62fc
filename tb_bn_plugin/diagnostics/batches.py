"""Rules about the batches BatchNorm normalises over: too few values per channel, per replica,
several differently distributed batches per step (a shared layer)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.diagnostics import layer_view as view
from tb_bn_plugin.diagnostics.finding import Finding, Rule
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.numerics.moments import call_divergence
from tb_bn_plugin.series import ReplicaSeries, RunData

TINY_BATCH = Rule(
    "tiny-batch",
    "warning",
    "Batch statistics computed from so few values per channel are noisy (one value gives "
    "variance 0 and an output equal to beta), so training normalises differently from "
    "inference and the moving statistics average noise. Use larger batches (count = batch "
    "size x spatial positions); drop a small last batch (dataset.batch(n, "
    "drop_remainder=True)); use BatchNormalization(synchronized=True) across replicas; or "
    "replace the layer with keras.layers.GroupNormalization or LayerNormalization, which "
    "do not depend on the batch. When fine-tuning with small batches, freeze the layer "
    "(trainable = False).",
)


REPLICA_BATCH_TOO_SMALL = Rule(
    "replica-batch-too-small",
    "warning",
    "Under tf.distribute each replica of an unsynchronised BatchNormalization layer "
    "normalises with the statistics of its own share of the global batch, so the effective "
    "BN batch is the per-replica batch, however large the global one: noisy statistics, a "
    "larger train/inference gap, and moving statistics that follow the first replica's "
    "share only. Use BatchNormalization(synchronized=True), which normalises with the "
    "global batch statistics (one all-reduce per layer and step), or a larger per-replica "
    "batch (global batch = per-replica batch x replicas), or GroupNormalization, which "
    "does not depend on the batch.",
)


SHARED_LAYER = Rule(
    "shared-layer",
    "warning",
    "One BatchNormalization layer is called several times in each training step on "
    "differently distributed batches (Siamese towers on different inputs, a GAN "
    "discriminator on real and generated batches, one block reused at several depths). "
    "Each call normalises with its own batch statistics, but every call updates the same "
    "moving statistics (Keras 3), so at inference each branch is normalised with a mixture "
    "of all branches' statistics: a train/inference gap that no single branch shows. Give "
    "each branch its own BatchNormalization layer (share the other weights), or make one "
    "call over the concatenated batch (keras.ops.concatenate([a, b], axis=0), then split "
    "the output) so that every sample is normalised with the same statistics.",
)


def tiny_batch(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``tiny-batch``: batch statistics from fewer than ``min_count`` values per channel."""
    findings = []
    for layer in run.ordered_layers():
        trained = view.trained(layer)
        counts = view.info(layer, "count", np.nan)[trained]
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
        if view.has_channels(layer, metadata.BATCH_VARIANCE):
            variance = layer.channels[metadata.BATCH_VARIANCE][view.snapshot_trained(layer)]
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
            TINY_BATCH.finding(
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
    """``replica-batch-too-small``: an unsynchronised layer normalises small per-replica batches."""
    findings = []
    for layer in run.ordered_layers():
        replicas = layer.replicas
        if (
            layer.config.synchronized
            or replicas is None
            or replicas.replicas < 2
            or not len(replicas.steps)
        ):
            continue
        smallest = replicas.count.min(axis=1)
        spread = float(
            np.median(np.mean(replica_mean_spread(replicas, layer.config.epsilon), axis=1))
        )
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
            else f"has batch means {evidence['replica_mean_spread']:.2g} global std apart from "
            "the others' "
            f"(sampling noise alone: about {evidence['iid_mean_spread']:.2g})"
        )
        findings.append(
            REPLICA_BATCH_TOO_SMALL.finding(
                f"unsynchronised: each of {replicas.replicas} replicas {reason} "
                f"(global batch {evidence['global_count']:g} values per channel)",
                [layer.config.path],
                evidence,
            )
        )
    return findings


def shared_layer(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``shared-layer``: the calls of one layer in one step normalise markedly different batches.

    Per logged step with per-call statistics, ``numerics.moments.call_divergence``
    gives per channel the largest standardized mean difference and log variance
    ratio between two calls; the rule takes the median over channels (a few
    noisy channels do not make a layer) and over steps, and fires when either
    exceeds ``shared_layer_shift`` or ``shared_layer_log_var``.
    """
    findings = []
    for layer in run.ordered_layers():
        calls = layer.calls
        if calls is None or calls.calls < 2 or not len(calls.steps):
            continue
        shift, log_var = call_divergence(calls.mean, calls.variance, layer.config.epsilon)
        step_shift = np.nanmedian(shift, axis=1)
        step_log_var = np.nanmedian(log_var, axis=1)
        median_shift = float(np.nanmedian(step_shift))
        median_log_var = float(np.nanmedian(step_log_var))
        if not (
            median_shift > thresholds.shared_layer_shift
            or median_log_var > thresholds.shared_layer_log_var
        ):
            continue
        channel_shift = np.nanmedian(shift, axis=0)
        channel_log_var = np.nanmedian(log_var, axis=0)
        marked = np.flatnonzero(
            (channel_shift > thresholds.shared_layer_shift)
            | (channel_log_var > thresholds.shared_layer_log_var)
        )
        evidence: dict[str, Any] = {
            "calls": calls.calls,
            "call_steps": len(calls.steps),
            "count_per_call": [float(c) for c in np.median(calls.count, axis=0)],
            "mean_shift": median_shift,
            "log_var_ratio": median_log_var,
            "max_channel_mean_shift": float(np.nanmax(channel_shift)),
            "marked_channels": int(len(marked)),
            "channels": layer.config.channels,
            "shift_threshold": thresholds.shared_layer_shift,
            "log_var_threshold": thresholds.shared_layer_log_var,
        }
        findings.append(
            SHARED_LAYER.finding(
                f"called {calls.calls} times per step on batches whose means differ by "
                f"{median_shift:.2g} pooled std and whose variances differ by a factor "
                f"{math.exp(median_log_var):.3g} (median over channels)",
                [layer.config.path],
                evidence,
                channels={layer.config.path: [int(c) for c in marked]},
            )
        )
    return findings
