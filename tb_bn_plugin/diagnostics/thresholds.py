"""The thresholds of the statistics rules; the ``diagnostics`` package docstring gives each."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Thresholds of the diagnostics; the module docstring gives each rule."""

    mismatch_shift: float = 0.5
    mismatch_log_var: float = math.log(2.0)
    unchanged_rtol: float = 1e-8
    initial_atol: float = 1e-6
    initial_weight: float = 0.05
    inverted_momentum: float = 0.5
    min_count: float = 8
    min_replica_count: float = 16
    max_replica_mean_spread: float = 0.5
    relative_loss_gap: float = 0.25
    reference_share: float = 0.1
    compound_gap: float = 1.0
    loss_floor: float = 1e-8
    attribution_share: float = 0.5
    dead_variance: float = 1e-6
    shared_layer_shift: float = 0.5
    shared_layer_log_var: float = math.log(2.0)
