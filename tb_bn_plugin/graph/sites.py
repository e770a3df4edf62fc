"""Find the BatchNorm sites of a GraphDef: the graph analysis's entry point, ``find_sites``.

A site is one BatchNorm layer (:class:`~tb_bn_plugin.graph.model.BNSite`):
its fused ops (``FusedBatchNorm*``) and ``tf.nn.batch_normalization`` calls
(``batchnorm/Rsqrt``), grouped by layer scope across the top-level graph
and its function library, sorted into a training path (batch statistics)
and an inference path (moving statistics); what selects between them
(``switch``); its moving-average updates, whether they run and their
momentum (``wiring``).

Pure functions over GraphDef protos: no TensorFlow runtime is imported.
Every graph's nodes are indexed by name once and every walk is bounded, so
the cost is linear in the number of nodes and edges
(``benchmarks/graph_analysis.py``). Judging the sites (findings) is
``diagnostics.graph``'s job.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

from tb_bn_plugin.graph import switch, wiring
from tb_bn_plugin.graph.index import GraphIndex, IndexedGraphDef, coerce_graph_def
from tb_bn_plugin.graph.model import (
    KIND_FUNCTIONAL_IF,
    KIND_SEPARATE_FUNCTIONS,
    KIND_SWITCH_MERGE,
    KIND_UNSWITCHED,
    BNSite,
    OpRef,
)
from tb_bn_plugin.graph.ops import ADD_OPS, BRANCH_ATTRS, FUSED_OPS, IF_OPS, UPDATE_OPS

# Name-scope segments BatchNorm implementations add below the layer's own scope.
# ``cond``/update scopes repeat within one layer (cond_1, AssignMovingAvg_1); a
# numbered ``batchnorm_1`` is a second tf.nn.batch_normalization call, kept apart.
_INNER_SCOPE = re.compile(r"(cond|AssignMovingAvg|AssignNewValue)(_\d+)?|batchnorm|moments")
# tf.distribute assigns a mirrored variable once per device, each under name
# scope ``update_<device>`` (``update_0_1``: the layer's second such assignment).
_DEVICE_UPDATE_SCOPE = re.compile(r"update_\d+(_\d+)?")
# A library function's name without TensorFlow's and tf-keras' decorations, e.g.
# "__inference_bn_layer_call_and_return_conditional_losses_133" -> "bn".
_FUNCTION_NAME = re.compile(
    r"(?:__inference_|__forward_|__backward_)?(?P<base>.+?)"
    r"(?:_layer_call_and_return_conditional_losses|_layer_call_fn)?(?:_\d+)*",
    re.DOTALL,
)
# How many If ops up a branch function's ops look for their layer scope.
_MAX_BRANCH_NESTING = 8


@dataclasses.dataclass
class GraphSites:
    """The BatchNorm sites of a GraphDef and what was searched.

    ``problems`` describes inconsistencies of the input the analysis worked
    around (see :class:`~tb_bn_plugin.graph.index.IndexedGraphDef`).
    """

    sites: list[BNSite]
    node_count: int
    function_count: int
    problems: list[str]


# A site's op and the branch it runs under.
_PathOp = tuple[OpRef, switch.BranchContext | None]


@dataclasses.dataclass
class _LayerOps:
    """What one layer scope holds: its training-path and inference-path ops, its update nodes."""

    training: list[_PathOp] = dataclasses.field(default_factory=list)
    inference: list[_PathOp] = dataclasses.field(default_factory=list)
    updates: list[tuple[GraphIndex, Any]] = dataclasses.field(default_factory=list)


def find_sites(graph_def: Any) -> GraphSites:
    """One :class:`BNSite` per BatchNorm layer in ``graph_def``, sorted by name.

    ``graph_def`` is a ``GraphDef`` (TensorBoard's or TensorFlow's proto class)
    or its serialized bytes. Raises
    :class:`~tb_bn_plugin.graph.index.MalformedGraphError` when it is not a
    usable GraphDef. The sites' ``findings`` are left empty.
    """
    graphs = IndexedGraphDef(coerce_graph_def(graph_def))
    layers: dict[str, _LayerOps] = collections.defaultdict(_LayerOps)
    updates = []
    for graph in graphs.reachable:
        for node in graph:
            if node.op in FUSED_OPS:
                _add_fused(layers, graph, node)
            elif node.op == "Rsqrt" and node.name.split("/")[-2:-1] == ["batchnorm"]:
                _add_unfused(layers, graphs, graph, node)
            elif node.op in UPDATE_OPS and wiring.is_update(graph, node):
                updates.append((graph, node))
    for graph, node in updates:
        key = _update_layer_of(graph, node.name)
        if key in layers:
            layers[key].updates.append((graph, node))
    updates_wiring = wiring.UpdateWiring()
    sites = sorted(
        (_site(key, ops, graphs, updates_wiring) for key, ops in layers.items()),
        key=lambda site: site.name,
    )
    return GraphSites(
        sites=sites,
        node_count=graphs.node_count,
        function_count=len(graphs.functions),
        problems=graphs.problems,
    )


def _layer_of(graph: GraphIndex, name: str, depth: int = 0) -> str:
    """The layer a node belongs to: its layer scope.

    Ops in If branches take the scope of the If op calling them; unscoped
    ops in other functions (tf-keras SavedModel layer calls) the function's
    base name.
    """
    for caller_graph, caller, attr_name in graph.callers:
        if attr_name in BRANCH_ATTRS and depth < _MAX_BRANCH_NESTING:
            return _layer_of(caller_graph, caller.name, depth + 1)
    if graph.function and "/" not in name:
        return _FUNCTION_NAME.fullmatch(graph.function).group("base")
    return _layer_scope(name)


def _update_layer_of(graph: GraphIndex, name: str) -> str:
    """The layer an update op belongs to: ``_layer_of`` without tf.distribute's per-device scope.

    Under ``MirroredStrategy`` an update of ``functional/bn`` is named
    ``functional/bn/update_0/AssignVariableOp`` (one per device); keyed by
    its raw scope it would match no layer and the site would look update-less.
    """
    segments = _layer_of(graph, name).split("/")
    while len(segments) > 1 and (
        _DEVICE_UPDATE_SCOPE.fullmatch(segments[-1]) or _INNER_SCOPE.fullmatch(segments[-1])
    ):
        segments.pop()
    return "/".join(segments)


def _layer_scope(name: str) -> str:
    """The layer scope of a node: its name scope without BatchNorm-internal segments."""
    segments = name.split("/")[:-1]
    if not segments:
        return name
    kept = list(segments)
    while kept and _INNER_SCOPE.fullmatch(kept[-1]):
        kept.pop()
    return "/".join(kept) or segments[0]


def _add_fused(layers: dict[str, _LayerOps], graph: GraphIndex, node: Any) -> None:
    training = node.attr["is_training"].b if "is_training" in node.attr else True
    entry = (graph.ref(node.name), switch.context_of(graph, node.name))
    ops = layers[_layer_of(graph, node.name)]
    (ops.training if training else ops.inference).append(entry)


def _add_unfused(
    layers: dict[str, _LayerOps], graphs: IndexedGraphDef, graph: GraphIndex, node: Any
) -> None:
    """``tf.nn.batch_normalization``: classify where its variance comes from."""
    inputs = graph.data_inputs(node.name)
    if not inputs:
        return
    variance = inputs[0]
    add = graph.node(variance.source)
    if add is not None and add.op in ADD_OPS and graph.data_inputs(add.name):
        variance = graph.data_inputs(add.name)[0]
    sources = [(s, switch.stat_kind(s)) for s in switch.trace(graphs.functions, graph, variance)]
    ops = layers[_layer_of(graph, node.name)]
    kinds = {kind for _, kind in sources}
    if "batch" in kinds and "moving" in kinds:
        # Statistics switched before one shared normalisation (non-fused tf.layers).
        for source, kind in sources:
            entry = (source.graph.ref(source.name), source.context)
            (ops.training if kind == "batch" else ops.inference).append(entry)
    else:
        entry = (graph.ref(node.name), switch.context_of(graph, node.name))
        (ops.training if "batch" in kinds else ops.inference).append(entry)


def _site(
    key: str,
    ops: _LayerOps,
    graphs: IndexedGraphDef,
    updates_wiring: wiring.UpdateWiring,
) -> BNSite:
    """Assemble layer ``key``'s site: its kind, paths, switch, updates and momentum."""
    training = list(dict.fromkeys(ref for ref, _ in ops.training))
    inference = list(dict.fromkeys(ref for ref, _ in ops.inference))
    contexts = [ctx for _, ctx in ops.training + ops.inference if ctx is not None]
    context = contexts[0] if contexts else None
    if context is not None:
        kind = KIND_FUNCTIONAL_IF if context.control.op in IF_OPS else KIND_SWITCH_MERGE
    elif (
        training
        and inference
        and not {r.function for r in training} & {r.function for r in inference}
    ):
        kind = KIND_SEPARATE_FUNCTIONS
    else:
        kind = KIND_UNSWITCHED
    site = BNSite(
        name=key,
        kind=kind,
        training_path=training,
        inference_path=inference,
        predicate=context.predicate if context else None,
        switch_op=context.control if context else None,
        merge_op=context.merge if context else None,
        update_ops=[graph.ref(node.name) for graph, node in ops.updates],
        moving_variables=_moving_variables(ops, graphs),
    )
    if ops.updates:
        scope = key + "/"
        site.updates_wired = all(updates_wiring.wired(g, n.name, scope) for g, n in ops.updates)
    for graph, node in ops.updates:
        found = wiring.momentum(graphs.functions, graph, node)
        if found is not None:
            site.momentum, site.momentum_source = found
            break
    return site


def _moving_variables(ops: _LayerOps, graphs: IndexedGraphDef) -> list[str]:
    """Update targets, else the mean/variance inputs (3, 4) of inference fused ops."""
    starts = [(graph, graph.data_inputs(node.name)[0]) for graph, node in ops.updates]
    if not starts:
        for ref, _ in ops.inference:
            graph = graphs.functions.get(ref.function, graphs.top)
            if ref.op in FUSED_OPS:
                starts += [(graph, i) for i in graph.data_inputs(ref.name)[3:5]]
    names = (s.name for graph, ref in starts for s in switch.trace(graphs.functions, graph, ref))
    return list(dict.fromkeys(names))
