"""The train/inference gap on the probe batch: its latest state and the rule over it."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

from tb_bn_plugin.diagnostics import layer_view as view
from tb_bn_plugin.diagnostics.finding import Finding, Rule
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.numerics.gap import relative_loss_gap, scaled_gap
from tb_bn_plugin.series import GapSeries, RunData

TRAIN_INFERENCE_GAP = Rule(
    "train-inference-gap",
    "warning",
    "The probe batch's loss differs markedly between training=True and training=False. "
    "Look at the other findings for the named layers (stale, slow or uninitialised moving "
    "statistics, tiny batches) and at their batch vs moving statistics. Typical remedies: "
    "lower the momentum or re-estimate the moving statistics on training batches with "
    "model(x, training=True), use larger batches or GroupNormalization, and make sure the "
    "evaluation data is preprocessed like the training data. Other mode-dependent layers "
    "(Dropout, GaussianNoise) also contribute to the model-level gap; the per-layer "
    "attribution separates them.",
)


@dataclasses.dataclass
class GapSummary:
    """A ``GapSeries`` at one step; per-layer dicts hold only finite values.

    ``local`` is the measured local gap where finite, else the one derived from
    statistics. ``loss_reference`` is the largest finite training-mode probe
    loss of the series (the loss's scale on this task); ``scaled_loss_gap`` the
    loss gap relative to it (``numerics.gap.scaled_gap``). ``metric_gaps``
    holds each compiled metric's gap at the step, scaled the same way by the
    metric's own largest training-mode value.
    """

    step: int
    train_loss: float
    inference_loss: float
    relative_loss_gap: float
    loss_reference: float
    scaled_loss_gap: float
    metric_gaps: dict[str, float]
    compound: dict[str, float]
    local: dict[str, float]
    attribution: dict[str, float]


def _largest_magnitude(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


def gap_summary(gap: GapSeries, thresholds: Thresholds = Thresholds()) -> Optional[GapSummary]:
    """The gap at the latest step where both probe losses are finite; None if there is none."""
    finite = np.isfinite(gap.train_loss) & np.isfinite(gap.inference_loss)
    if not finite.any():
        return None
    i = int(np.flatnonzero(finite)[-1])

    def at_step(per_layer: dict[str, np.ndarray]) -> dict[str, float]:
        values = {path: float(series[i]) for path, series in per_layer.items() if len(series) > i}
        return {path: value for path, value in values.items() if np.isfinite(value)}

    def scaled(train_series: np.ndarray, inference_series: np.ndarray) -> float:
        return scaled_gap(
            float(train_series[i]),
            float(inference_series[i]),
            _largest_magnitude(train_series),
            thresholds.reference_share,
        )

    metric_gaps = {
        name: scaled(np.asarray(modes["train"]), np.asarray(modes["inference"]))
        for name, modes in gap.metrics.items()
        if len(modes["train"]) > i and len(modes["inference"]) > i
    }
    train, inference = float(gap.train_loss[i]), float(gap.inference_loss[i])
    return GapSummary(
        step=int(gap.steps[i]),
        train_loss=train,
        inference_loss=inference,
        relative_loss_gap=float(relative_loss_gap(train, inference, thresholds.loss_floor)),
        loss_reference=_largest_magnitude(gap.train_loss),
        scaled_loss_gap=scaled(gap.train_loss, gap.inference_loss),
        metric_gaps={name: v for name, v in metric_gaps.items() if np.isfinite(v)},
        compound=at_step(gap.compound),
        local={**at_step(gap.local_derived), **at_step(gap.local)},
        attribution=at_step(gap.attribution),
    )


def share_of_scale(ratio: float) -> str:
    """``ratio`` (a gap over its scale) as a reader takes it in, to precede "the scale": a
    percentage up to 10 times, a factor beyond (a broken run's inference loss can be 10^4 times
    its scale: "2612309% of" reads as noise, "26,123 times" does not)."""
    return f"{ratio:.0%} of" if ratio < 10 else f"{ratio:,.0f} times"


def train_inference_gap(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """``train-inference-gap``: the probe batch behaves markedly differently in inference mode."""
    summary = None if run.gap is None else gap_summary(run.gap, thresholds)
    if summary is None:
        return []
    max_compound = max(summary.compound.values(), default=0.0)
    loss_gap = summary.scaled_loss_gap > thresholds.relative_loss_gap
    metric_gaps = {
        name: value
        for name, value in summary.metric_gaps.items()
        if value > thresholds.relative_loss_gap
    }
    if not (loss_gap or metric_gaps or max_compound > thresholds.compound_gap):
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
    index = view.layer_index(run)
    named = sorted(
        (p for p, score in scores.items() if cutoff > 0 and score >= cutoff),
        key=lambda p: (index.get(p, math.inf), p),
    )
    if loss_gap:
        title = (
            f"inference-mode loss {summary.inference_loss:.4g} vs training-mode "
            f"{summary.train_loss:.4g}: a gap of {share_of_scale(summary.scaled_loss_gap)} the "
            "loss scale"
        )
    elif metric_gaps:
        name, value = max(metric_gaps.items(), key=lambda item: item[1])
        title = f"{name} differs between modes by {share_of_scale(value)} its scale"
    else:
        title = f"layer outputs differ by up to {max_compound:.0%} (RMS) between modes"
    evidence: dict[str, Any] = {
        "step": summary.step,
        "train_loss": summary.train_loss,
        "inference_loss": summary.inference_loss,
        "relative_loss_gap": summary.relative_loss_gap,
        "loss_reference": summary.loss_reference,
        "scaled_loss_gap": summary.scaled_loss_gap,
        **{f"metric_gap/{name}": value for name, value in summary.metric_gaps.items()},
        "max_compound_gap": max_compound,
        "ranking": basis,
        **{f"{basis}/{p}": scores[p] for p in named},
    }
    return [TRAIN_INFERENCE_GAP.finding(title, named, evidence)]
