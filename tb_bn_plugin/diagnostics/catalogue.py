"""The rule catalogue: every rule once, in a deterministic order, and ``diagnose``."""

from __future__ import annotations

import math
from collections.abc import Callable

from tb_bn_plugin.diagnostics import batches, ema, gap, modes, moving_stats, values
from tb_bn_plugin.diagnostics.finding import Finding, severity_rank
from tb_bn_plugin.diagnostics.layer_view import layer_index
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.series import RunData

DIAGNOSTICS: tuple[Callable[[RunData, Thresholds], list[Finding]], ...] = (
    moving_stats.stale_moving_stats,
    moving_stats.momentum_one,
    moving_stats.slow_momentum,
    batches.tiny_batch,
    batches.replica_batch_too_small,
    gap.train_inference_gap,
    modes.frozen_bn,
    moving_stats.uninitialized_moving_stats,
    values.dead_channels,
    values.non_finite,
    ema.ema_error,
)


def diagnose(run: RunData, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """All findings for ``run``, sorted by severity (``SEVERITY_ORDER``), model order and code."""
    index = layer_index(run)
    findings = [f for diagnostic in DIAGNOSTICS for f in diagnostic(run, thresholds)]
    return sorted(
        findings,
        key=lambda f: (
            severity_rank(f.severity),
            min((index.get(p, math.inf) for p in f.layers), default=-1),
            f.code,
        ),
    )
