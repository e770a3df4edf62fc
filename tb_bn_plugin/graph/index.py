"""A GraphDef indexed once: input coercion, per-graph node indexes, call edges, input problems.

Owns the one exception of the graph analysis, :class:`MalformedGraphError`,
raised where input turns out unusable (not a GraphDef, undecodable bytes);
inconsistencies the analysis can work around (inputs naming missing nodes,
duplicate names, calls to missing functions) are collected as
``IndexedGraphDef.problems`` instead. Also parses node input references
(``name``, ``name:port``, ``^name``, ``node:output_arg:index``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from google.protobuf import message
from tensorboard.compat.proto import graph_pb2

from tb_bn_plugin.graph.model import OpRef
from tb_bn_plugin.graph.ops import FUSED_OUTPUT_PORTS

# Steps any walk back through the graph may take: bounds every trace.
TRACE_BUDGET = 64
_EVIDENCE_EXAMPLES = 5
# The suffix TensorFlow gives an ``If`` branch it rewrote to output what its gradient needs.
REWRITTEN_SUFFIX = "_rewritten"
# TensorFlow's and TensorBoard's copies of the GraphDef proto.
_GRAPH_DEF_PROTOS = frozenset({"tensorflow.GraphDef", "tensorboard.GraphDef"})


class MalformedGraphError(ValueError):
    """The input is not a usable GraphDef; the message says why."""


def coerce_graph_def(graph_def: Any) -> Any:
    """A GraphDef proto from a proto or serialized bytes; :class:`MalformedGraphError` otherwise."""
    if isinstance(graph_def, (bytes, bytearray, memoryview)):
        data = bytes(graph_def)
        parsed = graph_pb2.GraphDef()
        try:
            parsed.ParseFromString(data)
        except message.DecodeError as err:
            raise MalformedGraphError(
                f"{len(data)} bytes are not a serialized GraphDef: {err}"
            ) from None
        if data and not parsed.node and not parsed.library.function:
            raise MalformedGraphError(f"{len(data)} bytes parse to an empty GraphDef")
        return parsed
    descriptor = getattr(graph_def, "DESCRIPTOR", None)
    if getattr(descriptor, "full_name", None) not in _GRAPH_DEF_PROTOS:
        raise MalformedGraphError(f"expected a GraphDef, got {type(graph_def).__name__}")
    return graph_def


class InputRef(NamedTuple):
    """A parsed node input: the producing node, its output port, and whether it is ``^control``.

    ``port`` is -1 for control inputs.
    """

    source: str
    port: int
    control: bool


def _port_number(text: str) -> int:
    """A port written in ASCII decimal digits; anything else (malformed) reads as port 0."""
    if not (text.isascii() and text.isdigit()):
        return 0
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return 0


class GraphIndex:
    """Nodes of the top-level graph or of one library function, indexed once.

    Names map to positions in the proto's node list and consumers are kept in
    flat integer arrays (compressed sparse rows): building the index allocates
    almost no long-lived Python objects, so garbage collection stays cheap on
    graphs with tens of thousands of nodes. ``callers`` (filled by
    :class:`IndexedGraphDef`) lists ``(graph, node, attribute)`` for each op
    calling this function.
    """

    def __init__(
        self,
        function: str,
        nodes: Sequence[Any],
        args: Sequence[Any] = (),
        outputs: Sequence[str] = (),
        control_outputs: Sequence[str] = (),
    ) -> None:
        self.function = function
        self._nodes = nodes
        self._index: dict[str, int] = {}
        self.duplicates: list[str] = []
        for position, node in enumerate(nodes):
            if node.name in self._index:
                self.duplicates.append(node.name)
            self._index[node.name] = position
        self.args = {arg.name: (index, arg.type) for index, arg in enumerate(args)}
        self.outputs = [self.parse(ref) for ref in outputs]
        self.sinks = {ref.source for ref in self.outputs} | set(control_outputs)
        self.dangling: list[str] = []
        producers, consumers = [], []
        for position, node in enumerate(nodes):
            for ref in node.input:
                source = ref.lstrip("^").split(":", 1)[0]
                producer = self._index.get(source)
                if producer is not None:
                    producers.append(producer)
                    consumers.append(position)
                elif source not in self.args:
                    self.dangling.append(f"{node.name} <- {source}")
        self._offsets = [0] * (len(nodes) + 1)
        for producer in producers:
            self._offsets[producer + 1] += 1
        for position in range(len(nodes)):
            self._offsets[position + 1] += self._offsets[position]
        fill = self._offsets[:-1]
        self._consumers = [0] * len(producers)
        for producer, consumer in zip(producers, consumers, strict=True):
            self._consumers[fill[producer]] = consumer
            fill[producer] += 1
        self.callers: list[tuple[GraphIndex, Any, str]] = []
        self._live: set[str] | None = None

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[Any]:
        return iter(self._nodes)

    def node(self, name: str) -> Any:
        """The NodeDef called ``name``, or ``None``."""
        position = self._index.get(name)
        return self._nodes[position] if position is not None else None

    def consumers(self, name: str) -> list[str]:
        position = self._index.get(name)
        if position is None:
            return []
        span = self._consumers[self._offsets[position] : self._offsets[position + 1]]
        return [self._nodes[consumer].name for consumer in span]

    def parse(self, ref: str) -> InputRef:
        """``name``, ``name:port`` or ``^name``; in functions ``node:output_arg:index``."""
        if ref.startswith("^"):
            return InputRef(ref[1:], -1, True)
        parts = ref.split(":")
        port = 0
        if len(parts) == 3:
            port = FUSED_OUTPUT_PORTS.get(parts[1], _port_number(parts[2]))
        elif len(parts) == 2:
            port = _port_number(parts[1])
        return InputRef(parts[0], port, False)

    def inputs(self, name: str) -> list[InputRef]:
        node = self.node(name)
        return [self.parse(ref) for ref in node.input] if node is not None else []

    def data_inputs(self, name: str) -> list[InputRef]:
        return [ref for ref in self.inputs(name) if not ref.control]

    def ref(self, name: str) -> OpRef:
        node = self.node(name)
        return OpRef(name, node.op if node is not None else "", self.function)

    def tensor_name(self, ref: InputRef) -> str:
        """The tensor ``ref`` names, followed back through Identity ops."""
        for _ in range(TRACE_BUDGET):
            node = self.node(ref.source)
            if node is None or node.op != "Identity" or not self.data_inputs(ref.source):
                break
            ref = self.data_inputs(ref.source)[0]
        return f"{ref.source}:{ref.port}" if ref.source in self else ref.source

    def live(self) -> set[str]:
        """Function nodes that outputs or control outputs depend on (computed once)."""
        if self._live is None:
            live = set(self.sinks)
            stack = list(live)
            while stack:
                for ref in self.inputs(stack.pop()):
                    if ref.source in self and ref.source not in live:
                        live.add(ref.source)
                        stack.append(ref.source)
            self._live = live
        return self._live


class IndexedGraphDef:
    """A GraphDef's top-level graph and every library function, indexed and linked by calls.

    ``problems`` describes inconsistencies found while indexing (inputs naming
    missing nodes, duplicate node names, calls to functions missing from the
    library); the analysis goes on around them.

    ``reachable`` holds the graphs that can run: the top-level graph, the
    library's entry points, and every function they call, directly or through
    other functions. Entry points are the functions nothing in the GraphDef
    calls (a SavedModel's concrete functions are called from its object graph,
    a bare function library from outside), except orphaned control-flow
    branches: taking gradients through a control flow v2 ``If`` rewrites its
    branches (``<branch>_rewritten``, with the extra outputs the gradient
    needs) and re-points the ``If`` at them, leaving the original ``<branch>``
    behind, called by nothing. Their BatchNorm ops are not sites.
    """

    def __init__(self, graph_def: Any) -> None:
        self.top = GraphIndex("", graph_def.node)
        self.functions: dict[str, GraphIndex] = {}
        for fdef in graph_def.library.function:
            signature = fdef.signature
            self.functions[signature.name] = GraphIndex(
                signature.name,
                fdef.node_def,
                signature.input_arg,
                [fdef.ret.get(arg.name, "") for arg in signature.output_arg],
                list(fdef.control_ret.values()),
            )
        self.graphs = [self.top, *self.functions.values()]
        self.node_count = sum(len(graph) for graph in self.graphs)
        self.problems: list[str] = []
        missing = self._link_calls()
        self._collect_problems(missing)
        self.reachable = self._reachable()

    def _reachable(self) -> list[GraphIndex]:
        """The top-level graph and the functions reachable from it and from entry points."""
        callees: dict[str, set[str]] = {"": set()}
        for function in self.functions.values():
            for caller_graph, _, _ in function.callers:
                callees.setdefault(caller_graph.function, set()).add(function.function)
        entry_points = [
            name
            for name, function in self.functions.items()
            if not function.callers and f"{name}{REWRITTEN_SUFFIX}" not in self.functions
        ]
        reached: set[str] = set()
        stack = [*callees[""], *entry_points]
        while stack:
            function = stack.pop()
            if function not in reached:
                reached.add(function)
                stack.extend(callees.get(function, ()))
        return [self.top, *(g for name, g in self.functions.items() if name in reached)]

    def _link_calls(self) -> list[str]:
        """Fill each function's ``callers``; the calls to functions not in the library."""
        missing = []
        for graph in self.graphs:
            for node in graph:
                for attr_name, value in node.attr.items():
                    kind = value.WhichOneof("value")
                    if kind == "func":
                        names = [value.func.name]
                    elif kind == "list" and value.list.func:
                        names = [func.name for func in value.list.func]
                    else:
                        continue
                    for callee in names:
                        if callee in self.functions:
                            self.functions[callee].callers.append((graph, node, attr_name))
                        else:
                            missing.append(f"{node.name} calls {callee}")
        return missing

    def _collect_problems(self, missing_functions: list[str]) -> None:
        for graph in self.graphs:
            where = f" in {graph.function}" if graph.function else ""
            if graph.dangling:
                examples = "; ".join(graph.dangling[:_EVIDENCE_EXAMPLES])
                self.problems.append(
                    f"{len(graph.dangling)} input(s) name missing nodes{where}: {examples}"
                )
            if graph.duplicates:
                examples = ", ".join(graph.duplicates[:_EVIDENCE_EXAMPLES])
                self.problems.append(f"duplicate node names{where}: {examples}")
        if missing_functions:
            examples = "; ".join(missing_functions[:_EVIDENCE_EXAMPLES])
            self.problems.append(
                f"{len(missing_functions)} call(s) to functions not in the library: {examples}"
            )
