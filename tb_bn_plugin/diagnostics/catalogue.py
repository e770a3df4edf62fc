"""The rule catalogue: every rule once (``CATALOGUE``), the statistics rules in order, ``diagnose``.

Each rule family module (``moving_stats``, ``batches``, ``gap``, ``modes``,
``values``, ``ema``, ``graph``) defines its rules as module-level ``Rule``
constants; ``CATALOGUE`` collects them by code and refuses two different
rules with one code (a family may use another's rule: ``graph`` fires
``moving_stats.MOMENTUM_ONE``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from types import ModuleType

from tb_bn_plugin.diagnostics import batches, ema, gap, graph, modes, moving_stats, values
from tb_bn_plugin.diagnostics.finding import Finding, Rule, severity_rank
from tb_bn_plugin.diagnostics.layer_view import layer_index
from tb_bn_plugin.diagnostics.thresholds import Thresholds
from tb_bn_plugin.series import RunData

FAMILIES: tuple[ModuleType, ...] = (moving_stats, batches, gap, modes, values, ema, graph)


def build_catalogue(families: Iterable[ModuleType]) -> dict[str, Rule]:
    """Every ``Rule`` defined at module level in ``families``, by code, in definition order.

    Raises ``ValueError`` when two different ``Rule`` objects share a code.
    """
    catalogue: dict[str, Rule] = {}
    for family in families:
        for name, rule in vars(family).items():
            if not isinstance(rule, Rule):
                continue
            known = catalogue.setdefault(rule.code, rule)
            if known is not rule:
                raise ValueError(
                    f"rule code {rule.code!r} is defined twice ({family.__name__}.{name} and "
                    "another rule); every code must be one Rule"
                )
    return catalogue


CATALOGUE: dict[str, Rule] = build_catalogue(FAMILIES)

# The statistics rules (over ``RunData``), in the order ``diagnose`` runs them.
DIAGNOSTICS: tuple[Callable[[RunData, Thresholds], list[Finding]], ...] = (
    moving_stats.stale_moving_stats,
    moving_stats.momentum_one,
    moving_stats.inverted_momentum,
    moving_stats.slow_momentum,
    batches.tiny_batch,
    batches.replica_batch_too_small,
    batches.shared_layer,
    gap.train_inference_gap,
    modes.frozen_bn,
    moving_stats.uninitialized_moving_stats,
    values.dead_channels,
    values.non_finite,
    ema.ema_error,
    ema.ema_weights_stale_stats,
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
