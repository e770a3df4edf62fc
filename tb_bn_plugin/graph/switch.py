"""Control flow: which Switch/Merge or If decides whether an op runs, and where a value comes from.

``context_of`` finds the v1 ``Switch`` (and ``Merge``) or the functional
``If``/``StatelessIf`` deciding whether a node runs: a :class:`BranchContext`
with its predicate and the branch taken. ``trace`` follows a value back
through pass-through ops, ``Merge`` inputs, ``If`` branches, called functions
and function arguments to its :class:`ValueSource` s, each with the branch it
came through. Every search is bounded (a few hops for switches, a fixed
budget for traces), so the cost per query is constant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from tb_bn_plugin.graph.index import TRACE_BUDGET, GraphIndex, InputRef
from tb_bn_plugin.graph.model import OpRef
from tb_bn_plugin.graph.ops import (
    BATCH_STAT_OPS,
    BRANCH_ATTRS,
    CALL_OPS,
    DT_RESOURCE,
    IF_OPS,
    MERGE_OPS,
    PASS_THROUGH,
    SWITCH_OPS,
    VARIABLE_OPS,
)

# How far back (forward, for Merge) from an op a v1 Switch is searched, and per-hop fan-out.
_SWITCH_SEARCH_DEPTH = 3
_SEARCH_VISITS = 64


@dataclasses.dataclass(frozen=True)
class BranchContext:
    """The control flow a path runs under: a Switch or If, its branch and predicate.

    ``branch`` is True on the training side (the Switch's true output, the
    If's ``then_branch``); ``merge`` is the v1 Merge joining the branches.
    """

    control: OpRef
    branch: bool
    predicate: str | None
    merge: OpRef | None = None


@dataclasses.dataclass(frozen=True)
class ValueSource:
    """Where a traced value comes from: a node (or an unbound function argument).

    ``context`` is the branch the value came through, if any.
    """

    graph: GraphIndex
    name: str
    port: int
    context: BranchContext | None

    @property
    def node(self) -> Any:
        return self.graph.node(self.name)


# A pending step of a trace: the graph, node, output port and branch so far.
_Step = tuple[GraphIndex, str, int, BranchContext | None]


def context_of(graph: GraphIndex, name: str) -> BranchContext | None:
    """The Switch (v1) or If (functional) that decides whether ``name`` runs."""
    switch = find_switch(graph, name)
    if switch is not None:
        return switch_context(graph, *switch, merge=find_merge(graph, name))
    for caller_graph, caller, attr_name in graph.callers:
        if attr_name in BRANCH_ATTRS:
            return if_context(caller_graph, caller, BRANCH_ATTRS[attr_name])
    return None


def switch_context(graph: GraphIndex, switch: str, port: int, merge: OpRef | None) -> BranchContext:
    """The branch of output ``port`` of v1 Switch ``switch`` (port 1: the true side)."""
    predicate = graph.data_inputs(switch)[1:2]
    return BranchContext(
        control=graph.ref(switch),
        branch=port == 1,
        predicate=graph.tensor_name(predicate[0]) if predicate else None,
        merge=merge,
    )


def if_context(graph: GraphIndex, node: Any, branch: bool) -> BranchContext:
    """The ``branch`` (True: then) of If op ``node``."""
    condition = graph.data_inputs(node.name)[:1]
    return BranchContext(
        control=graph.ref(node.name),
        branch=branch,
        predicate=graph.tensor_name(condition[0]) if condition else None,
    )


def find_switch(graph: GraphIndex, name: str, port: int = 0) -> tuple[str, int] | None:
    """The v1 Switch output ``(switch, port)`` feeding ``name`` (data or control), a few hops back.

    Merge nodes end the search: they leave a cond context.
    """
    node = graph.node(name)
    if node is not None and node.op in SWITCH_OPS:
        return name, port
    frontier, seen = [name], {name}
    for _ in range(_SWITCH_SEARCH_DEPTH):
        next_frontier = []
        for current in frontier:
            for ref in graph.inputs(current)[:_SEARCH_VISITS]:
                source = graph.node(ref.source)
                if source is None or ref.source in seen or source.op in MERGE_OPS:
                    continue
                if source.op in SWITCH_OPS:
                    return ref.source, max(ref.port, 0)
                seen.add(ref.source)
                next_frontier.append(ref.source)
        frontier = next_frontier[:_SEARCH_VISITS]
    return None


def find_merge(graph: GraphIndex, name: str) -> OpRef | None:
    """The v1 Merge that ``name``'s output reaches through pass-through ops, a few hops on."""
    frontier = [name]
    for _ in range(_SWITCH_SEARCH_DEPTH):
        next_frontier = []
        for current in frontier:
            for consumer in graph.consumers(current)[:_SEARCH_VISITS]:
                op = graph.node(consumer).op
                if op in MERGE_OPS:
                    return graph.ref(consumer)
                if op in PASS_THROUGH:
                    next_frontier.append(consumer)
        frontier = next_frontier[:_SEARCH_VISITS]
    return None


def trace(
    functions: Mapping[str, GraphIndex],
    graph: GraphIndex,
    start: InputRef,
    context: BranchContext | None = None,
) -> Iterator[ValueSource]:
    """Where the value ``start`` comes from, through pass-through ops and control flow.

    Fans out over Merge inputs and If branches (recording the branch taken),
    into called functions' outputs (looked up in ``functions``) and from
    function arguments to callers. Visits at most ``TRACE_BUDGET`` nodes.
    """
    stack: list[_Step] = [(graph, start.source, start.port, context)]
    seen: set[tuple[str, str, int]] = set()
    budget = TRACE_BUDGET
    while stack and budget:
        budget -= 1
        graph, name, port, context = stack.pop()
        if (graph.function, name, port) in seen:
            continue
        seen.add((graph.function, name, port))
        node = graph.node(name)
        if node is None:
            callers = _arg_sources(graph, name)
            if not callers:
                yield ValueSource(graph, name, port, context)
            stack.extend((g, ref.source, ref.port, context) for g, ref in callers)
            continue
        inputs = graph.data_inputs(name)
        if node.op in PASS_THROUGH or node.op in SWITCH_OPS:
            if inputs:
                stack.append((graph, inputs[0].source, inputs[0].port, context))
        elif node.op in MERGE_OPS:
            for ref in reversed(inputs):
                stack.append(
                    (graph, ref.source, ref.port, context or _merge_context(graph, name, ref))
                )
        elif node.op in IF_OPS or node.op in CALL_OPS:
            stack.extend(_into_callee(functions, graph, node, port, context))
        else:
            yield ValueSource(graph, name, port, context)


def stat_kind(source: ValueSource) -> str:
    """``batch`` for statistics computed from the batch, ``moving`` for stored ones."""
    node = source.node
    if node is None:
        arg = source.graph.args.get(source.name)
        return "moving" if arg is not None and arg[1] == DT_RESOURCE else "unknown"
    if node.op in VARIABLE_OPS:
        return "moving"
    if node.op in BATCH_STAT_OPS or "/moments/" in node.name:
        return "batch"
    return "unknown"


def _merge_context(graph: GraphIndex, merge: str, ref: InputRef) -> BranchContext | None:
    """The branch a Merge input comes from."""
    switch = find_switch(graph, ref.source, ref.port)
    if switch is None:
        return None
    return switch_context(graph, *switch, merge=graph.ref(merge))


def _into_callee(
    functions: Mapping[str, GraphIndex],
    graph: GraphIndex,
    node: Any,
    port: int,
    context: BranchContext | None,
) -> list[_Step]:
    """Output ``port`` of an If or call op, inside the called function(s)."""
    steps = []
    for attr_name in ("else_branch", "then_branch", "f"):
        if attr_name not in node.attr:
            continue
        callee = functions.get(node.attr[attr_name].func.name)
        if callee is None or port >= len(callee.outputs):
            continue
        branch_context = context
        if context is None and attr_name in BRANCH_ATTRS:
            branch_context = if_context(graph, node, BRANCH_ATTRS[attr_name])
        ref = callee.outputs[port]
        steps.append((callee, ref.source, ref.port, branch_context))
    return steps


def _arg_sources(graph: GraphIndex, arg: str) -> list[tuple[GraphIndex, InputRef]]:
    """The caller inputs bound to function argument ``arg``."""
    if arg not in graph.args:
        return []
    index = graph.args[arg][0]
    sources = []
    for caller_graph, caller, attr_name in graph.callers:
        offset = 1 if attr_name in BRANCH_ATTRS else 0  # an If's input 0 is its predicate
        inputs = caller_graph.data_inputs(caller.name)
        if index + offset < len(inputs):
            sources.append((caller_graph, inputs[index + offset]))
    return sources
