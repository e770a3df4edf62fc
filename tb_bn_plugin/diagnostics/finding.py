"""One finding type for every diagnosis (statistics and graph), its rule, and one severity order."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from tb_bn_plugin.formatting import json_safe

SEVERITY_ORDER = ("error", "warning", "info")


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
        return json_safe(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class Rule:
    """A diagnosis's stable ``code``, its ``severity`` and what the user can do (``fix``)."""

    code: str
    severity: str
    fix: str

    def finding(
        self,
        title: str,
        layers: list[str],
        evidence: dict[str, Any],
        channels: Optional[dict[str, list[int]]] = None,
    ) -> Finding:
        """A ``Finding`` of this rule."""
        return Finding(self.code, self.severity, title, layers, channels or {}, evidence, self.fix)


def severity_rank(severity: str) -> int:
    """0 for the most severe (``error``); the sort key of findings everywhere."""
    return SEVERITY_ORDER.index(severity)
