"""What the graph analysis returns: :class:`OpRef` (an op) and :class:`BNSite` (a BatchNorm layer).

Plain data with JSON encodings, no logic: the facts the other ``graph``
modules find and ``diagnostics.graph`` judges.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# What selects between a site's training and inference paths (``BNSite.kind``).
KIND_SWITCH_MERGE = "switch_merge"
KIND_FUNCTIONAL_IF = "functional_if"
KIND_SEPARATE_FUNCTIONS = "separate_functions"
KIND_UNSWITCHED = "unswitched"


@dataclasses.dataclass(frozen=True)
class OpRef:
    """An op in the graph: node name, op type, and the library function holding it.

    ``function`` is ``""`` for the top-level graph.
    """

    name: str
    op: str
    function: str = ""

    def __str__(self) -> str:
        return f"{self.name} (in {self.function})" if self.function else self.name

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BNSite:
    """One BatchNorm layer and how training and inference reach it.

    ``kind`` is one of the ``KIND_*`` constants: a v1 ``Switch``/``Merge`` pair
    (``switch_merge``), an ``If``/``StatelessIf`` whose branches are library
    functions (``functional_if``), two separately traced functions such as
    Keras 3's train and inference steps (``separate_functions``), or nothing
    (``unswitched``, e.g. a frozen inference graph).
    ``training_path`` holds the ops that use batch statistics and
    ``inference_path`` the ops that use the moving statistics. For a layer that
    normalises once with switched statistics (non-fused ``tf.layers``), the
    paths hold the statistic sources (``moments`` vs the moving variables).
    ``predicate`` is the tensor deciding the path; ``switch_op`` the ``Switch``
    or ``If`` op routing on it; ``merge_op`` the v1 ``Merge`` joining the paths.
    ``updates_wired`` is ``None`` when the graph has no update ops for the layer.
    ``updates_applied`` is set instead for a site described by a backend
    without a TensorFlow graph (``graph.step_functions``): whether the real
    train step changed the moving statistics (``None``: not decided).
    ``momentum`` is read from the update's constants (``momentum_source``).
    ``moving_variables`` names the nodes holding the moving statistics (the
    update targets, else the inference path's inputs): variables, frozen
    constants, or ``variables/<path>`` placeholders from ``trace_model_graph``.
    ``findings`` lists the codes of the graph rules that hold for the site;
    ``diagnostics.graph.report_graph`` fills it.
    """

    name: str
    kind: str
    training_path: list[OpRef]
    inference_path: list[OpRef]
    predicate: str | None = None
    switch_op: OpRef | None = None
    merge_op: OpRef | None = None
    update_ops: list[OpRef] = dataclasses.field(default_factory=list)
    updates_wired: bool | None = None
    updates_applied: bool | None = None
    momentum: float | None = None
    momentum_source: OpRef | None = None
    moving_variables: list[str] = dataclasses.field(default_factory=list)
    findings: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The one JSON form of a site (the plugin's ``graph`` route and ``tb-bn graph --json``).

        Ops are named by node name, as ``frontend/API.md`` publishes them;
        ``ops`` maps every named op to its type and library function.
        """
        refs = [
            *self.training_path,
            *self.inference_path,
            *self.update_ops,
            *(ref for ref in (self.switch_op, self.merge_op, self.momentum_source) if ref),
        ]
        return {
            "name": self.name,
            "kind": self.kind,
            "training_path": [ref.name for ref in self.training_path],
            "inference_path": [ref.name for ref in self.inference_path],
            "predicate": self.predicate,
            "switch_op": self.switch_op.name if self.switch_op else None,
            "merge_op": self.merge_op.name if self.merge_op else None,
            "update_ops": [ref.name for ref in self.update_ops],
            "updates_wired": self.updates_wired,
            "updates_applied": self.updates_applied,
            "momentum": self.momentum,
            "momentum_source": self.momentum_source.name if self.momentum_source else None,
            "moving_variables": list(self.moving_variables),
            "findings": list(self.findings),
            "ops": {ref.name: {"op": ref.op, "function": ref.function} for ref in refs},
        }
