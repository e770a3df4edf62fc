"""Moving-average update ops: which assignments are updates, whether they run, their momentum.

``is_update`` tells an update computed in the graph from a variable's
initializer or restore. :class:`UpdateWiring` decides whether something that
runs every step depends on an update (memoised, so all updates of a graph
cost about one pass over it; iterative, so call nesting has no depth limit).
``momentum`` folds the update's arithmetic back to the momentum constant:
``assign_sub((var - value) * (1 - momentum))``,
``assign(var * momentum + value * (1 - momentum))`` or a fused op's
``exponential_avg_factor``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tensorboard.util import tensor_util

from tb_bn_plugin.graph.index import GraphIndex, InputRef
from tb_bn_plugin.graph.model import OpRef
from tb_bn_plugin.graph.ops import ADD_OPS, FUSED_OPS, SUBTRACTING_UPDATES
from tb_bn_plugin.graph.switch import ValueSource, stat_kind, trace

# A momentum and the op it was read from.
Momentum = tuple[float, OpRef]


def is_update(graph: GraphIndex, node: Any) -> bool:
    """An assignment computed in the graph (not a variable initializer or restore)."""
    inputs = graph.data_inputs(node.name)
    if len(inputs) < 2:
        return False
    value = graph.node(inputs[1].source)
    return value is None or (
        value.op not in ("Const", "RestoreV2") and "/Initializer/" not in value.name
    )


class UpdateWiring:
    """Whether something that runs each step depends on an op, memoised over one graph."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str, str], bool] = {}
        self._escapes: dict[str, dict[str, bool]] = {}

    def wired(self, graph: GraphIndex, name: str, scope: str) -> bool:
        """Whether something that runs each step depends on op ``name``.

        In a function that means its outputs or control outputs (auto control
        dependencies put every stateful op there) and that one of the ops
        calling the function is wired, up the call chain. In the top-level
        graph, where the fetches are unknown, it means a node outside the
        layer's ``scope`` depends on it: the update's own read-backs and cond
        plumbing do not count. Walks the call chain with an explicit stack, so
        deeply nested calls cost no Python recursion.
        """
        first = self._settle(graph, name, scope)
        if first is not None:
            return first
        # Ops waiting for their callers' answers, each with the callers not yet asked.
        stack = [((graph.function, name, scope), iter(graph.callers))]
        while stack:
            key, callers = stack[-1]
            answer: bool | None = False
            for caller_graph, caller, _ in callers:
                answer = self._settle(caller_graph, caller.name, scope)
                if answer is None:
                    stack.append(
                        ((caller_graph.function, caller.name, scope), iter(caller_graph.callers))
                    )
                    break
                if answer:
                    break
            else:
                answer = False
            if answer is None:
                continue  # that caller needs its own callers' answers first
            stack.pop()
            self._memo[key] = answer
            while answer and stack:  # wired: so is every op waiting on it
                self._memo[stack.pop()[0]] = True
        return self._memo[(graph.function, name, scope)]

    def _settle(self, graph: GraphIndex, name: str, scope: str) -> bool | None:
        """``wired`` for ``name`` where it does not depend on callers; ``None`` where it does.

        Marks ``name`` unwired while its callers are asked, which breaks call cycles.
        """
        key = (graph.function, name, scope)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = False
        if not graph.function:
            self._memo[key] = self._leaves_scope(graph, name, scope)
            return self._memo[key]
        if name not in graph.live():
            return False
        if not graph.callers:
            self._memo[key] = True
            return True
        return None

    def _leaves_scope(self, graph: GraphIndex, name: str, scope: str) -> bool:
        """Whether a node outside ``scope`` depends on ``name`` (memoised per scope).

        Depth-first through consumers inside the scope. Every visited node's
        answer is kept, so all update ops of a layer together cost one pass
        over the layer's scope.
        """
        memo = self._escapes.setdefault(scope, {})
        if name in memo:
            return memo[name]
        memo[name] = False  # also marks "in progress": a cycle does not escape
        stack = [(name, iter(graph.consumers(name)))]
        while stack:
            for consumer in stack[-1][1]:
                if not consumer.startswith(scope) or memo.get(consumer):
                    memo.update((node, True) for node, _ in stack)
                    return True
                if consumer not in memo:
                    memo[consumer] = False
                    stack.append((consumer, iter(graph.consumers(consumer))))
                    break
            else:
                stack.pop()
        return False


def momentum(functions: Mapping[str, GraphIndex], graph: GraphIndex, node: Any) -> Momentum | None:
    """Momentum of moving-average update ``node``, read from the graph's constants.

    Recognises ``assign_sub((var - value) * (1 - momentum))`` (TF1 and
    tf-keras), ``assign(var * momentum + value * (1 - momentum))`` (Keras 3)
    and ``assign(FusedBatchNormV3.batch_mean)`` with an
    ``exponential_avg_factor`` of ``1 - momentum``. ``functions`` are the
    library's functions, for tracing into calls.
    """
    inputs = graph.data_inputs(node.name)
    for source in _training_sources(functions, graph, inputs[1]):
        value = source.node
        if value is None:
            continue
        if node.op in SUBTRACTING_UPDATES and value.op == "Mul":
            factors = source.graph.data_inputs(value.name)
            found = _first(_one_minus(functions, source.graph, ref) for ref in factors)
        elif value.op in ADD_OPS:
            terms = source.graph.data_inputs(value.name)
            found = _first(_decayed_term(functions, source.graph, ref) for ref in terms)
        elif value.op in FUSED_OPS and source.port in (1, 2):
            factor = (
                value.attr["exponential_avg_factor"].f
                if "exponential_avg_factor" in value.attr
                else 1.0
            )
            found = (1.0 - factor, source.graph.ref(value.name))
        else:
            continue
        if found is not None:
            return round(found[0], 6), found[1]
    return None


def _first(candidates: Iterator[Momentum | None]) -> Momentum | None:
    return next((c for c in candidates if c is not None), None)


def _training_sources(
    functions: Mapping[str, GraphIndex], graph: GraphIndex, ref: InputRef
) -> Iterator[ValueSource]:
    """Sources of ``ref`` on the training side of any Switch/If on the way."""
    return (s for s in trace(functions, graph, ref) if s.context is None or s.context.branch)


def _constant(
    functions: Mapping[str, GraphIndex], graph: GraphIndex, ref: InputRef
) -> Momentum | None:
    """The scalar constant ``ref`` comes from (training side) and its node."""
    for source in _training_sources(functions, graph, ref):
        value = _scalar(source.node)
        if value is not None:
            return value, source.graph.ref(source.name)
    return None


def _one_minus(
    functions: Mapping[str, GraphIndex], graph: GraphIndex, ref: InputRef
) -> Momentum | None:
    """Momentum from the ``1 - momentum`` factor of an assign_sub update."""
    for source in _training_sources(functions, graph, ref):
        node = source.node
        if node is None:
            continue
        if node.op == "Const":
            value = _scalar(node)
            return (1.0 - value, source.graph.ref(source.name)) if value is not None else None
        operands = source.graph.data_inputs(node.name)
        if node.op == "Sub" and len(operands) == 2:
            one = _constant(functions, source.graph, operands[0])
            if one is not None and one[0] == 1.0:
                return _constant(functions, source.graph, operands[1])
    return None


def _decayed_term(
    functions: Mapping[str, GraphIndex], graph: GraphIndex, ref: InputRef
) -> Momentum | None:
    """Momentum from a ``moving * momentum`` term of a Keras 3 style update."""
    for source in _training_sources(functions, graph, ref):
        node = source.node
        if node is None or node.op != "Mul":
            continue
        operands = source.graph.data_inputs(node.name)
        reads_variable = any(
            stat_kind(s) == "moving" and (s.node is None or s.node.op != "Const")
            for ref in operands
            for s in trace(functions, source.graph, ref)
        )
        if reads_variable:
            return _first(_constant(functions, source.graph, ref) for ref in operands)
    return None


def _scalar(node: Any) -> float | None:
    """The value of a one-element ``Const``; ``None`` for anything else or undecodable tensors."""
    if node is None or node.op != "Const":
        return None
    try:
        array = tensor_util.make_ndarray(node.attr["value"].tensor)
        return float(array.reshape(-1)[0]) if array.size == 1 else None
    except (ValueError, TypeError, KeyError, IndexError):
        return None
