"""Rules about averages that drift apart from what inference needs.

``ema-error``: moving statistics off the precise population statistics (reads
``RunData.ema_error``, the measurements ``PreciseStatsMonitor`` logs).
``ema-weights-stale-stats``: the optimizer's EMA weights paired with moving
statistics of the live weights (reads ``RunData.ema_weights_gap``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np

from tb_bn_plugin.diagnostics import layer_view as view
from tb_bn_plugin.diagnostics.finding import Finding, Rule
from tb_bn_plugin.diagnostics.gap import gap_summary
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.numerics.ema import EmaError
from tb_bn_plugin.numerics.gap import scaled_gap
from tb_bn_plugin.series import RunData

EMA_ERROR = Rule(
    "ema-error",
    "warning",
    "The moving statistics used at inference do not match the population statistics of the "
    "layer's inputs. Recalibrate them after training with tb_bn_plugin.recalibrate(model, "
    "train_data) (precise BatchNorm), raise the batch size, or lower the momentum so the EMA "
    "tracks recent weights.",
)


def ema_error_finding(
    errors: Mapping[str, EmaError],
    max_mean_shift: float = Thresholds.mismatch_shift,
    max_abs_log_var: float = Thresholds.mismatch_log_var,
    channels: Optional[Mapping[str, Sequence[int]]] = None,
    step: Optional[int] = None,
) -> list[Finding]:
    """``ema-error`` (warning): some layer's EMA is off its precise population statistics.

    Fires when, for a layer (``errors``: path -> ``EmaError`` in model order),
    some channel's normalised mean shift exceeds ``max_mean_shift`` or its
    |log variance ratio| exceeds ``max_abs_log_var`` (defaults:
    ``Thresholds.mismatch_shift`` / ``mismatch_log_var``). Returns a list of at
    most one ``Finding``.
    """
    bad = [
        path
        for path, e in errors.items()
        if e.max_mean_shift > max_mean_shift or e.max_abs_log_var_ratio > max_abs_log_var
    ]
    if not bad:
        return []
    worst = max(bad, key=lambda p: errors[p].score)
    evidence = {
        "max_mean_shift_threshold": max_mean_shift,
        "max_abs_log_var_threshold": max_abs_log_var,
        "layers": {p: dataclasses.asdict(errors[p]) for p in bad},
    }
    if step is not None:
        evidence["step"] = int(step)
    title = (
        f"moving statistics of {len(bad)} BatchNorm layer(s) are off their precise population "
        f"statistics (worst {worst!r}: mean shift up to {errors[worst].max_mean_shift:.3g} std, "
        f"|log var ratio| up to {errors[worst].max_abs_log_var_ratio:.3g})"
    )
    return [
        EMA_ERROR.finding(
            title, bad, evidence, {p: list(channels[p]) for p in bad if channels and p in channels}
        )
    ]


def ema_error(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``ema-error``: the EMA is off the precise population statistics at the latest measurement."""
    if not run.ema_error:
        return []
    order = view.layer_index(run)
    latest = {
        path: (int(series.steps[-1]), series.error_at(-1))
        for path, series in sorted(run.ema_error.items(), key=lambda kv: order.get(kv[0], math.inf))
        if len(series.steps)
    }
    return ema_error_finding(
        {path: error for path, (_, error) in latest.items()},
        max_mean_shift=thresholds.mismatch_shift,
        max_abs_log_var=thresholds.mismatch_log_var,
        step=max((step for step, _ in latest.values()), default=None),
    )


EMA_WEIGHTS_STALE_STATS = Rule(
    "ema-weights-stale-stats",
    "warning",
    "The optimizer averages the weights (use_ema=True) but not the BatchNorm moving "
    "statistics: Keras' EMA covers trainable variables only, SwapEMAWeights swaps "
    "optimizer._trainable_variables, and fit ends with "
    "optimizer.finalize_variable_values(model.trainable_weights). After fit the model holds "
    "the EMA weights with the moving statistics of the live weights, which describe "
    "activations the EMA weights do not produce. Re-estimate the statistics for the weights "
    "you deploy, after fit (and after any swap to the EMA weights): "
    "tb_bn_plugin.recalibrate(model, train_dataset, num_batches=100) (training batches, no "
    "augmentation that inference does not see). With keras.callbacks.SwapEMAWeights "
    "recalibrate inside the swapped state if you evaluate the EMA weights during training.",
)


def ema_weights_stale_stats(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``ema-weights-stale-stats``: the EMA weights fit the moving statistics markedly worse.

    With ``L_inf`` the probe loss of the EMA weights with the moving statistics
    and ``L_re`` with statistics re-estimated for them (the probe's batch
    statistics), fires when ``scaled_gap(L_re, L_inf, reference)`` exceeds
    ``relative_loss_gap``; the reference is the largest training-mode probe
    loss of the run (epoch-end gaps and this one), as for
    ``train-inference-gap``.
    """
    if run.ema_weights_gap is None:
        return []
    series = [g for g in (run.gap, run.ema_weights_gap) if g is not None]
    train = np.concatenate([g.train_loss for g in series])
    train = np.abs(train[np.isfinite(train)])
    summary = gap_summary(run.ema_weights_gap, thresholds)
    if summary is None:
        return []
    reference = float(train.max()) if train.size else 0.0
    gap = scaled_gap(
        summary.train_loss, summary.inference_loss, reference, thresholds.reference_share
    )
    if not gap > thresholds.relative_loss_gap:
        return []
    return [
        EMA_WEIGHTS_STALE_STATS.finding(
            f"EMA weights with the moving statistics: probe loss {summary.inference_loss:.4g}, "
            f"with statistics re-estimated for them {summary.train_loss:.4g}",
            [layer.config.path for layer in run.ordered_layers()],
            {
                "step": summary.step,
                "stale_statistics_loss": summary.inference_loss,
                "reestimated_statistics_loss": summary.train_loss,
                "loss_reference": reference,
                "scaled_loss_gap": gap,
                "threshold": thresholds.relative_loss_gap,
            },
        )
    ]
