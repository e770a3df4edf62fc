"""``ema-error``: moving statistics off the precise population statistics.

Reads ``RunData.ema_error``, the measurements ``PreciseStatsMonitor`` logs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Optional

from tb_bn_plugin.diagnostics import layer_view as view
from tb_bn_plugin.diagnostics.finding import Finding, Rule
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.numerics.ema import EmaError
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
