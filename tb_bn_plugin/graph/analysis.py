"""Find the BatchNorm sites of a TensorFlow graph and what selects training vs inference.

``analyze_graph(graph_def)`` returns one :class:`BNSite` per BatchNorm layer
found in a ``GraphDef`` and its function library:

* the op(s) that normalise with the batch's statistics (training path) and the
  op(s) that use the moving statistics (inference path);
* what selects between them: a v1 ``Switch``/``Merge`` pair (``switch_merge``),
  an ``If``/``StatelessIf`` whose branches are library functions
  (``functional_if``), two separately traced functions such as Keras 3's
  train and inference steps (``separate_functions``), or nothing
  (``unswitched``, e.g. a frozen inference graph);
* the moving-average update ops, whether something that runs every step depends
  on them, and the momentum read from the graph's constants.

``report_graph`` adds graph-level :class:`Finding` s (``update-ops-not-wired``,
``momentum-one``, ...) with evidence and a fix, and turns unparseable or
inconsistent input into ``malformed-graph`` findings: nothing here raises on
bad input.

Pure functions over GraphDef protos: no TensorFlow runtime is imported. Every
graph's nodes are indexed by name once and every walk is bounded, so the cost
is linear in the number of nodes and edges (``benchmarks/graph_analysis.py``).

The TensorBoard plugin computes the analysis on request from the run graph
already stored in the event file (``graph_io.read_run_graph``); no extra
summaries are written.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from google.protobuf import message
from tensorboard.compat.proto import graph_pb2
from tensorboard.util import tensor_util

KIND_SWITCH_MERGE = "switch_merge"
KIND_FUNCTIONAL_IF = "functional_if"
KIND_SEPARATE_FUNCTIONS = "separate_functions"
KIND_UNSWITCHED = "unswitched"

UPDATE_OPS_NOT_WIRED = "update-ops-not-wired"
MOMENTUM_ONE = "momentum-one"
NO_UPDATE_OPS = "no-update-ops"
NO_BATCHNORM = "no-batchnorm"
MALFORMED_GRAPH = "malformed-graph"

SEVERITIES = ("info", "warning", "error")

_FUSED_OPS = frozenset(
    {"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "_FusedBatchNormEx"}
)
_IF_OPS = frozenset({"If", "StatelessIf"})
_CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
_SWITCH_OPS = frozenset({"Switch", "RefSwitch"})
_MERGE_OPS = frozenset({"Merge", "RefMerge"})
_UPDATE_OPS = frozenset({"AssignSubVariableOp", "AssignSub", "AssignVariableOp", "Assign"})
_SUBTRACTING_UPDATES = frozenset({"AssignSubVariableOp", "AssignSub"})
_ADD_OPS = frozenset({"Add", "AddV2"})
# Ops a value flows through unchanged (for this analysis).
_PASS_THROUGH = frozenset(
    {
        "Identity",
        "RefIdentity",
        "Snapshot",
        "Cast",
        "Squeeze",
        "Reshape",
        "ExpandDims",
        "StopGradient",
        "PreventGradient",
        "CheckNumerics",
        "EnsureShape",
        "Enter",
    }
)
# Where moving statistics come from: variables, their reads, frozen constants.
_VARIABLE_OPS = frozenset({"ReadVariableOp", "VarHandleOp", "VariableV2", "Variable", "Const"})
# Ops that compute statistics of the current batch (tf.nn.moments and friends).
_BATCH_STAT_OPS = frozenset({"Mean", "Sum", "SquaredDifference", "RealDiv", "DivNoNan"})
_FUSED_OUTPUT_PORTS = {"y": 0, "batch_mean": 1, "batch_variance": 2}
_BRANCH_ATTRS = {"then_branch": True, "else_branch": False}
_DT_RESOURCE = 20
# Name-scope segments BatchNorm implementations add below the layer's own scope.
# ``cond``/update scopes repeat within one layer (cond_1, AssignMovingAvg_1); a
# numbered ``batchnorm_1`` is a second tf.nn.batch_normalization call, kept apart.
_INNER_SCOPE = re.compile(r"(cond|AssignMovingAvg|AssignNewValue)(_\d+)?|batchnorm|moments")
# A library function's name without TensorFlow's and tf-keras' decorations, e.g.
# "__inference_bn_layer_call_and_return_conditional_losses_133" -> "bn".
_FUNCTION_NAME = re.compile(
    r"(?:__inference_|__forward_|__backward_)?(?P<base>.+?)"
    r"(?:_layer_call_and_return_conditional_losses|_layer_call_fn)?(?:_\d+)*"
)
_SWITCH_SEARCH_DEPTH = 3
_SEARCH_VISITS = 64
_TRACE_BUDGET = 64
_MAX_CALL_DEPTH = 8
_EVIDENCE_EXAMPLES = 5


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

    ``training_path`` holds the ops that use batch statistics and
    ``inference_path`` the ops that use the moving statistics. For a layer that
    normalises once with switched statistics (non-fused ``tf.layers``), the
    paths hold the statistic sources (``moments`` vs the moving variables).
    ``predicate`` is the tensor deciding the path; ``switch_op`` the ``Switch``
    or ``If`` op routing on it; ``merge_op`` the v1 ``Merge`` joining the paths.
    ``updates_wired`` is ``None`` when the graph has no update ops for the layer.
    ``moving_variables`` names the nodes holding the moving statistics (the
    update targets, else the inference path's inputs): variables, frozen
    constants, or ``variables/<path>`` placeholders from ``trace_model_graph``.
    ``findings`` lists finding codes (see :func:`graph_findings`).
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
    momentum: float | None = None
    momentum_source: OpRef | None = None
    moving_variables: list[str] = dataclasses.field(default_factory=list)
    findings: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "training_path": [ref.to_json() for ref in self.training_path],
            "inference_path": [ref.to_json() for ref in self.inference_path],
            "predicate": self.predicate,
            "switch_op": self.switch_op.to_json() if self.switch_op else None,
            "merge_op": self.merge_op.to_json() if self.merge_op else None,
            "update_ops": [ref.to_json() for ref in self.update_ops],
            "updates_wired": self.updates_wired,
            "momentum": self.momentum,
            "momentum_source": self.momentum_source.to_json() if self.momentum_source else None,
            "moving_variables": list(self.moving_variables),
            "findings": list(self.findings),
        }


@dataclasses.dataclass(frozen=True)
class Finding:
    """A graph-level diagnosis: what is wrong, where (evidence), and how to fix it."""

    code: str
    severity: str
    title: str
    evidence: tuple[str, ...]
    fix: str
    sites: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "title": self.title,
            "evidence": list(self.evidence),
            "fix": self.fix,
            "sites": list(self.sites),
        }


@dataclasses.dataclass
class GraphReport:
    """The BatchNorm sites of a graph plus graph-level findings."""

    sites: list[BNSite]
    findings: list[Finding]
    node_count: int = 0
    function_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "sites": [site.to_json() for site in self.sites],
            "findings": [finding.to_json() for finding in self.findings],
            "node_count": self.node_count,
            "function_count": self.function_count,
        }


def analyze_graph(graph_def: Any) -> list[BNSite]:
    """One :class:`BNSite` per BatchNorm layer in ``graph_def``, sorted by name.

    ``graph_def`` is a ``GraphDef`` (TensorBoard's or TensorFlow's proto class)
    or its serialized bytes. Never raises: unusable input gives ``[]`` (see
    :func:`report_graph` for the reason).
    """
    return report_graph(graph_def).sites


def report_graph(graph_def: Any) -> GraphReport:
    """Sites and graph-level findings for ``graph_def``; never raises."""
    try:
        graph_def = _coerce_graph_def(graph_def)
    except ValueError as err:
        return GraphReport(sites=[], findings=[_malformed(str(err))])
    try:
        library = _Library(graph_def)
        sites = library.sites()
    except (RecursionError, ValueError, TypeError, AttributeError, KeyError, IndexError) as err:
        # Protos can be inconsistent in ways no walk anticipates; report, never crash.
        return GraphReport(sites=[], findings=[_malformed(f"analysis failed: {err!r}")])
    findings = graph_findings(sites)
    if library.problems:
        findings.append(_malformed(*library.problems))
    if not sites:
        findings.append(
            Finding(
                code=NO_BATCHNORM,
                severity="info",
                title="No BatchNorm ops in this graph",
                evidence=(
                    f"{library.node_count} nodes, {len(library.functions)} functions searched",
                ),
                fix="Nothing to inspect here. If the model has BatchNormalization layers, log "
                "the graph that runs them (the training or inference step), not a "
                "preprocessing or export-only graph.",
            )
        )
    return GraphReport(
        sites=sites,
        findings=findings,
        node_count=library.node_count,
        function_count=len(library.functions),
    )


def graph_findings(sites: Sequence[BNSite]) -> list[Finding]:
    """Graph-level findings aggregated from the sites' finding codes, most severe first."""
    by_code: dict[str, list[BNSite]] = collections.defaultdict(list)
    for site in sites:
        for code in site.findings:
            by_code[code].append(site)
    findings = [
        Finding(
            code=code,
            severity=spec.severity,
            title=spec.title,
            evidence=tuple(spec.evidence(site) for site in by_code[code]),
            fix=spec.fix,
            sites=tuple(site.name for site in by_code[code]),
        )
        for code, spec in _SITE_FINDINGS.items()
        if by_code.get(code)
    ]
    findings.sort(key=lambda f: -SEVERITIES.index(f.severity))
    return findings


class _FindingSpec(NamedTuple):
    severity: str
    title: str
    fix: str
    evidence: Callable[[BNSite], str]


def _update_evidence(site: BNSite) -> str:
    ops = ", ".join(str(ref) for ref in site.update_ops)
    return f"{site.name}: nothing that runs each step depends on {ops}"


def _momentum_evidence(site: BNSite) -> str:
    source = site.momentum_source
    read = f"exponential_avg_factor of {source}" if source.op in _FUSED_OPS else str(source)
    return f"{site.name}: momentum {site.momentum:g} read from {read}"


def _no_update_evidence(site: BNSite) -> str:
    ops = ", ".join(str(ref) for ref in site.training_path)
    return f"{site.name}: training path {ops} has no moving-average update in this graph"


_SITE_FINDINGS = {
    UPDATE_OPS_NOT_WIRED: _FindingSpec(
        "warning",
        "Moving-average updates are never run",
        "In graph mode BatchNormalization only creates the ops that update moving_mean and "
        "moving_variance; nothing runs them unless the train op depends on them, so inference "
        "keeps normalising with the initial statistics (mean 0, variance 1). Build the train op "
        "under the update ops: `update_ops = tf.compat.v1.get_collection("
        "tf.compat.v1.GraphKeys.UPDATE_OPS)` then `with tf.control_dependencies(update_ops): "
        "train_op = optimizer.minimize(loss)`, or run `update_ops` together with every training "
        "step. Keras `fit` and `tf.function` training steps wire them automatically.",
        _update_evidence,
    ),
    MOMENTUM_ONE: _FindingSpec(
        "warning",
        "Moving statistics never change (momentum/decay = 1)",
        "The update is `moving = momentum * moving + (1 - momentum) * batch`; with momentum "
        "(decay) 1 the moving mean and variance keep their initial values (0 and 1) forever, so "
        "inference uses statistics unrelated to the data. Use a momentum below 1: 0.99 (the "
        "default) for long runs, 0.9 or lower when training for few steps. Check where the "
        "value comes from: a `decay`/`momentum` argument or a schedule that reached 1.",
        _momentum_evidence,
    ),
    NO_UPDATE_OPS: _FindingSpec(
        "info",
        "Training path without moving-average updates",
        "The graph normalises with batch statistics but contains no op that updates the moving "
        "statistics for this layer. That is expected in a frozen or exported inference graph, "
        "whose training branch is unused. If you train with this graph, the moving statistics "
        "never change: recreate it from the model code so the update ops are included and run.",
        _no_update_evidence,
    ),
}


def _malformed(*problems: str) -> Finding:
    return Finding(
        code=MALFORMED_GRAPH,
        severity="error",
        title="The graph is malformed or only partly usable",
        evidence=tuple(problems),
        fix="Re-export the graph from the model (`tf.io.write_graph`, `tf.saved_model.save` or "
        "`tb-bn graph`); a truncated or hand-edited GraphDef can hide or invent BatchNorm ops. "
        "Results for the parts that could be read are still shown.",
    )


def _coerce_graph_def(graph_def: Any) -> Any:
    """A GraphDef-like proto from a proto or serialized bytes; ``ValueError`` otherwise."""
    if isinstance(graph_def, (bytes, bytearray, memoryview)):
        data = bytes(graph_def)
        parsed = graph_pb2.GraphDef()
        try:
            parsed.ParseFromString(data)
        except message.DecodeError as err:
            raise ValueError(f"{len(data)} bytes are not a serialized GraphDef: {err}") from None
        if data and not parsed.node and not parsed.library.function:
            raise ValueError(f"{len(data)} bytes parse to an empty GraphDef")
        return parsed
    if not (hasattr(graph_def, "node") and hasattr(graph_def, "library")):
        raise ValueError(f"expected a GraphDef, got {type(graph_def).__name__}")
    return graph_def


# ---------------------------------------------------------------------------
# Graph indexing


class _Input(NamedTuple):
    source: str
    port: int
    control: bool


@dataclasses.dataclass(frozen=True)
class _Context:
    """The control flow a path runs under: a Switch or If, its branch and predicate."""

    control: OpRef
    branch: bool
    predicate: str | None
    merge: OpRef | None = None


@dataclasses.dataclass(frozen=True)
class _Terminal:
    """Where a traced value comes from: a node (or an unbound function argument)."""

    graph: _Graph
    name: str
    port: int
    context: _Context | None

    @property
    def node(self) -> Any:
        return self.graph.node(self.name)


class _Graph:
    """Nodes of the top-level graph or of one library function, indexed once.

    Names map to positions in the proto's node list and consumers are kept in
    flat integer arrays (compressed sparse rows): building the index allocates
    almost no long-lived Python objects, so garbage collection stays cheap on
    graphs with tens of thousands of nodes.
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
        self.callers: list[tuple[_Graph, Any, str]] = []
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

    def parse(self, ref: str) -> _Input:
        """``name``, ``name:port`` or ``^name``; in functions ``node:output_arg:index``."""
        if ref.startswith("^"):
            return _Input(ref[1:], -1, True)
        parts = ref.split(":")
        port = 0
        if len(parts) == 3:
            port = _FUSED_OUTPUT_PORTS.get(parts[1], _int(parts[2]))
        elif len(parts) == 2:
            port = _int(parts[1])
        return _Input(parts[0], port, False)

    def inputs(self, name: str) -> list[_Input]:
        node = self.node(name)
        return [self.parse(ref) for ref in node.input] if node is not None else []

    def data_inputs(self, name: str) -> list[_Input]:
        return [ref for ref in self.inputs(name) if not ref.control]

    def ref(self, name: str) -> OpRef:
        node = self.node(name)
        return OpRef(name, node.op if node is not None else "", self.function)

    def tensor_name(self, ref: _Input) -> str:
        """The tensor ``ref`` names, followed back through Identity ops."""
        for _ in range(_TRACE_BUDGET):
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


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _layer_key(name: str) -> str:
    """The layer scope of a node: its name scope without BatchNorm-internal segments."""
    segments = name.split("/")[:-1]
    if not segments:
        return name
    kept = list(segments)
    while kept and _INNER_SCOPE.fullmatch(kept[-1]):
        kept.pop()
    return "/".join(kept) or segments[0]


def _scalar(node: Any) -> float | None:
    if node is None or node.op != "Const":
        return None
    try:
        array = tensor_util.make_ndarray(node.attr["value"].tensor)
        return float(array.reshape(-1)[0]) if array.size == 1 else None
    except (ValueError, TypeError, KeyError, IndexError):
        return None


@dataclasses.dataclass
class _Parts:
    training: list[tuple[OpRef, _Context | None]] = dataclasses.field(default_factory=list)
    inference: list[tuple[OpRef, _Context | None]] = dataclasses.field(default_factory=list)
    updates: list[tuple[_Graph, Any]] = dataclasses.field(default_factory=list)


class _Library:
    """The top-level graph and its function library, with call edges."""

    def __init__(self, graph_def: Any) -> None:
        self.top = _Graph("", graph_def.node)
        self.functions: dict[str, _Graph] = {}
        for fdef in graph_def.library.function:
            signature = fdef.signature
            self.functions[signature.name] = _Graph(
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
        self._wired_memo: dict[tuple[str, str, str], bool] = {}
        self._escapes: dict[str, dict[str, bool]] = {}

    def _link_calls(self) -> list[str]:
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

    # -- sites ---------------------------------------------------------------

    def sites(self) -> list[BNSite]:
        parts: dict[str, _Parts] = collections.defaultdict(_Parts)
        updates = []
        for graph in self.graphs:
            for node in graph:
                if node.op in _FUSED_OPS:
                    self._add_fused(parts, graph, node)
                elif node.op == "Rsqrt" and node.name.split("/")[-2:-1] == ["batchnorm"]:
                    self._add_unfused(parts, graph, node)
                elif node.op in _UPDATE_OPS and self._is_update(graph, node):
                    updates.append((graph, node))
        for graph, node in updates:
            key = self._key(graph, node.name)
            if key in parts:
                parts[key].updates.append((graph, node))
        return sorted((self._site(key, p) for key, p in parts.items()), key=lambda s: s.name)

    def _key(self, graph: _Graph, name: str, depth: int = 0) -> str:
        """Layer key of a node: its layer scope.

        Ops in If branches take the scope of the If op calling them; unscoped
        ops in other functions (tf-keras SavedModel layer calls) the function's
        base name.
        """
        for caller_graph, caller, attr_name in graph.callers:
            if attr_name in _BRANCH_ATTRS and depth < _MAX_CALL_DEPTH:
                return self._key(caller_graph, caller.name, depth + 1)
        if graph.function and "/" not in name:
            return _FUNCTION_NAME.fullmatch(graph.function).group("base")
        return _layer_key(name)

    def _add_fused(self, parts: dict[str, _Parts], graph: _Graph, node: Any) -> None:
        training = node.attr["is_training"].b if "is_training" in node.attr else True
        entry = (graph.ref(node.name), self._context(graph, node.name))
        path = parts[self._key(graph, node.name)]
        (path.training if training else path.inference).append(entry)

    def _add_unfused(self, parts: dict[str, _Parts], graph: _Graph, node: Any) -> None:
        """``tf.nn.batch_normalization``: classify where its variance comes from."""
        inputs = graph.data_inputs(node.name)
        if not inputs:
            return
        variance = inputs[0]
        add = graph.node(variance.source)
        if add is not None and add.op in _ADD_OPS and graph.data_inputs(add.name):
            variance = graph.data_inputs(add.name)[0]
        sources = [(t, _stat_kind(t)) for t in self._trace(graph, variance)]
        path = parts[self._key(graph, node.name)]
        kinds = {kind for _, kind in sources}
        if "batch" in kinds and "moving" in kinds:
            # Statistics switched before one shared normalisation (non-fused tf.layers).
            for terminal, kind in sources:
                entry = (terminal.graph.ref(terminal.name), terminal.context)
                (path.training if kind == "batch" else path.inference).append(entry)
        else:
            entry = (graph.ref(node.name), self._context(graph, node.name))
            (path.training if "batch" in kinds else path.inference).append(entry)

    def _site(self, key: str, parts: _Parts) -> BNSite:
        training = list(dict.fromkeys(ref for ref, _ in parts.training))
        inference = list(dict.fromkeys(ref for ref, _ in parts.inference))
        contexts = [ctx for _, ctx in parts.training + parts.inference if ctx is not None]
        context = contexts[0] if contexts else None
        if context is not None:
            kind = KIND_FUNCTIONAL_IF if context.control.op in _IF_OPS else KIND_SWITCH_MERGE
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
            update_ops=[graph.ref(node.name) for graph, node in parts.updates],
            moving_variables=self._moving_variables(parts),
        )
        if parts.updates:
            scope = key + "/"
            site.updates_wired = all(self._wired(g, n.name, scope) for g, n in parts.updates)
        for graph, node in parts.updates:
            momentum = self._momentum(graph, node)
            if momentum is not None:
                site.momentum, site.momentum_source = momentum
                break
        if site.updates_wired is False:
            site.findings.append(UPDATE_OPS_NOT_WIRED)
        if site.momentum is not None and abs(site.momentum - 1.0) < 1e-6:
            site.findings.append(MOMENTUM_ONE)
        if training and not parts.updates:
            site.findings.append(NO_UPDATE_OPS)
        return site

    def _moving_variables(self, parts: _Parts) -> list[str]:
        """Update targets, else the mean/variance inputs (3, 4) of inference fused ops."""
        starts = [(graph, graph.data_inputs(node.name)[0]) for graph, node in parts.updates]
        if not starts:
            for ref, _ in parts.inference:
                graph = self.functions.get(ref.function, self.top)
                if ref.op in _FUSED_OPS:
                    starts += [(graph, i) for i in graph.data_inputs(ref.name)[3:5]]
        names = (t.name for graph, ref in starts for t in self._trace(graph, ref))
        return list(dict.fromkeys(names))

    # -- control flow --------------------------------------------------------

    def _context(self, graph: _Graph, name: str) -> _Context | None:
        """The Switch (v1) or If (functional) that decides whether ``name`` runs."""
        switch = self._find_switch(graph, name)
        if switch is not None:
            return self._switch_context(graph, *switch, merge=self._find_merge(graph, name))
        for caller_graph, caller, attr_name in graph.callers:
            if attr_name in _BRANCH_ATTRS:
                return self._if_context(caller_graph, caller, _BRANCH_ATTRS[attr_name])
        return None

    @staticmethod
    def _switch_context(graph: _Graph, switch: str, port: int, merge: OpRef | None) -> _Context:
        predicate = graph.data_inputs(switch)[1:2]
        return _Context(
            control=graph.ref(switch),
            branch=port == 1,
            predicate=graph.tensor_name(predicate[0]) if predicate else None,
            merge=merge,
        )

    @staticmethod
    def _if_context(graph: _Graph, node: Any, branch: bool) -> _Context:
        condition = graph.data_inputs(node.name)[:1]
        return _Context(
            control=graph.ref(node.name),
            branch=branch,
            predicate=graph.tensor_name(condition[0]) if condition else None,
        )

    @staticmethod
    def _find_switch(graph: _Graph, name: str, port: int = 0) -> tuple[str, int] | None:
        """The v1 Switch output feeding ``name`` (data or control), a few hops back.

        Merge nodes end the search: they leave a cond context.
        """
        node = graph.node(name)
        if node is not None and node.op in _SWITCH_OPS:
            return name, port
        frontier, seen = [name], {name}
        for _ in range(_SWITCH_SEARCH_DEPTH):
            next_frontier = []
            for current in frontier:
                for ref in graph.inputs(current)[:_SEARCH_VISITS]:
                    source = graph.node(ref.source)
                    if source is None or ref.source in seen or source.op in _MERGE_OPS:
                        continue
                    if source.op in _SWITCH_OPS:
                        return ref.source, max(ref.port, 0)
                    seen.add(ref.source)
                    next_frontier.append(ref.source)
            frontier = next_frontier[:_SEARCH_VISITS]
        return None

    @staticmethod
    def _find_merge(graph: _Graph, name: str) -> OpRef | None:
        frontier = [name]
        for _ in range(_SWITCH_SEARCH_DEPTH):
            next_frontier = []
            for current in frontier:
                for consumer in graph.consumers(current)[:_SEARCH_VISITS]:
                    op = graph.node(consumer).op
                    if op in _MERGE_OPS:
                        return graph.ref(consumer)
                    if op in _PASS_THROUGH:
                        next_frontier.append(consumer)
            frontier = next_frontier[:_SEARCH_VISITS]
        return None

    def _trace(
        self, graph: _Graph, start: _Input, context: _Context | None = None
    ) -> Iterator[_Terminal]:
        """Where the value ``start`` comes from, through pass-through ops and control flow.

        Fans out over Merge inputs and If branches (recording the branch taken),
        into called functions' outputs and from function arguments to callers.
        """
        stack = [(graph, start.source, start.port, context)]
        seen: set[tuple[str, str, int]] = set()
        budget = _TRACE_BUDGET
        while stack and budget:
            budget -= 1
            graph, name, port, context = stack.pop()
            if (graph.function, name, port) in seen:
                continue
            seen.add((graph.function, name, port))
            node = graph.node(name)
            if node is None:
                callers = self._arg_sources(graph, name)
                if not callers:
                    yield _Terminal(graph, name, port, context)
                stack.extend((g, ref.source, ref.port, context) for g, ref in callers)
                continue
            inputs = graph.data_inputs(name)
            if node.op in _PASS_THROUGH or node.op in _SWITCH_OPS:
                if inputs:
                    stack.append((graph, inputs[0].source, inputs[0].port, context))
            elif node.op in _MERGE_OPS:
                for ref in reversed(inputs):
                    stack.append(
                        (
                            graph,
                            ref.source,
                            ref.port,
                            context or self._merge_context(graph, name, ref),
                        )
                    )
            elif node.op in _IF_OPS or node.op in _CALL_OPS:
                stack.extend(self._into_callee(graph, node, port, context))
            else:
                yield _Terminal(graph, name, port, context)

    def _merge_context(self, graph: _Graph, merge: str, ref: _Input) -> _Context | None:
        """The branch a Merge input comes from."""
        switch = self._find_switch(graph, ref.source, ref.port)
        if switch is None:
            return None
        return self._switch_context(graph, *switch, merge=graph.ref(merge))

    def _into_callee(
        self, graph: _Graph, node: Any, port: int, context: _Context | None
    ) -> list[tuple[_Graph, str, int, _Context | None]]:
        """Output ``port`` of an If or call op, inside the called function(s)."""
        steps = []
        for attr_name in ("else_branch", "then_branch", "f"):
            if attr_name not in node.attr:
                continue
            callee = self.functions.get(node.attr[attr_name].func.name)
            if callee is None or port >= len(callee.outputs):
                continue
            branch_context = context
            if context is None and attr_name in _BRANCH_ATTRS:
                branch_context = self._if_context(graph, node, _BRANCH_ATTRS[attr_name])
            ref = callee.outputs[port]
            steps.append((callee, ref.source, ref.port, branch_context))
        return steps

    @staticmethod
    def _arg_sources(graph: _Graph, arg: str) -> list[tuple[_Graph, _Input]]:
        """The caller inputs bound to function argument ``arg``."""
        if arg not in graph.args:
            return []
        index = graph.args[arg][0]
        sources = []
        for caller_graph, caller, attr_name in graph.callers:
            offset = 1 if attr_name in _BRANCH_ATTRS else 0  # an If's input 0 is its predicate
            inputs = caller_graph.data_inputs(caller.name)
            if index + offset < len(inputs):
                sources.append((caller_graph, inputs[index + offset]))
        return sources

    # -- updates -------------------------------------------------------------

    @staticmethod
    def _is_update(graph: _Graph, node: Any) -> bool:
        """An assignment computed in the graph (not a variable initializer or restore)."""
        inputs = graph.data_inputs(node.name)
        if len(inputs) < 2:
            return False
        value = graph.node(inputs[1].source)
        return value is None or (
            value.op not in ("Const", "RestoreV2") and "/Initializer/" not in value.name
        )

    def _wired(self, graph: _Graph, name: str, scope: str) -> bool:
        """Whether something that runs each step depends on op ``name``.

        In a function that means its outputs or control outputs (auto control
        dependencies put every stateful op there) and, recursively, that the
        op calling the function is wired. In the top-level graph, where the
        fetches are unknown, it means a node outside the layer's scope depends
        on it: the update's own read-backs and cond plumbing do not count.
        """
        key = (graph.function, name, scope)
        if key in self._wired_memo:
            return self._wired_memo[key]
        self._wired_memo[key] = False  # breaks call cycles
        if graph.function:
            wired = name in graph.live()
            if wired and graph.callers:
                wired = any(self._wired(g, caller.name, scope) for g, caller, _ in graph.callers)
        else:
            wired = self._leaves_scope(graph, name, scope)
        self._wired_memo[key] = wired
        return wired

    def _leaves_scope(self, graph: _Graph, name: str, scope: str) -> bool:
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

    def _momentum(self, graph: _Graph, node: Any) -> tuple[float, OpRef] | None:
        """Momentum of a moving-average update, read from the graph's constants.

        Recognises ``assign_sub((var - value) * (1 - momentum))`` (TF1 and
        tf-keras), ``assign(var * momentum + value * (1 - momentum))`` (Keras 3)
        and ``assign(FusedBatchNormV3.batch_mean)`` with an
        ``exponential_avg_factor`` of ``1 - momentum``.
        """
        inputs = graph.data_inputs(node.name)
        for terminal in self._training_terminals(graph, inputs[1]):
            value = terminal.node
            if value is None:
                continue
            if node.op in _SUBTRACTING_UPDATES and value.op == "Mul":
                factors = terminal.graph.data_inputs(value.name)
                found = self._first(self._one_minus(terminal.graph, ref) for ref in factors)
            elif value.op in _ADD_OPS:
                terms = terminal.graph.data_inputs(value.name)
                found = self._first(self._decayed_term(terminal.graph, ref) for ref in terms)
            elif value.op in _FUSED_OPS and terminal.port in (1, 2):
                factor = (
                    value.attr["exponential_avg_factor"].f
                    if "exponential_avg_factor" in value.attr
                    else 1.0
                )
                found = (1.0 - factor, terminal.graph.ref(value.name))
            else:
                continue
            if found is not None:
                return round(found[0], 6), found[1]
        return None

    @staticmethod
    def _first(
        candidates: Iterator[tuple[float, OpRef] | None],
    ) -> tuple[float, OpRef] | None:
        return next((c for c in candidates if c is not None), None)

    def _training_terminals(self, graph: _Graph, ref: _Input) -> Iterator[_Terminal]:
        """Sources of ``ref`` on the training side of any Switch/If on the way."""
        return (t for t in self._trace(graph, ref) if t.context is None or t.context.branch)

    def _constant(self, graph: _Graph, ref: _Input) -> tuple[float, OpRef] | None:
        for terminal in self._training_terminals(graph, ref):
            value = _scalar(terminal.node)
            if value is not None:
                return value, terminal.graph.ref(terminal.name)
        return None

    def _one_minus(self, graph: _Graph, ref: _Input) -> tuple[float, OpRef] | None:
        """Momentum from the ``1 - momentum`` factor of an assign_sub update."""
        for terminal in self._training_terminals(graph, ref):
            node = terminal.node
            if node is None:
                continue
            if node.op == "Const":
                value = _scalar(node)
                return (
                    (1.0 - value, terminal.graph.ref(terminal.name)) if value is not None else None
                )
            operands = terminal.graph.data_inputs(node.name)
            if node.op == "Sub" and len(operands) == 2:
                one = self._constant(terminal.graph, operands[0])
                if one is not None and one[0] == 1.0:
                    return self._constant(terminal.graph, operands[1])
        return None

    def _decayed_term(self, graph: _Graph, ref: _Input) -> tuple[float, OpRef] | None:
        """Momentum from a ``moving * momentum`` term of a Keras 3 style update."""
        for terminal in self._training_terminals(graph, ref):
            node = terminal.node
            if node is None or node.op != "Mul":
                continue
            operands = terminal.graph.data_inputs(node.name)
            reads_variable = any(
                _stat_kind(t) == "moving" and (t.node is None or t.node.op != "Const")
                for ref in operands
                for t in self._trace(terminal.graph, ref)
            )
            if reads_variable:
                return self._first(self._constant(terminal.graph, ref) for ref in operands)
        return None


def _stat_kind(terminal: _Terminal) -> str:
    """``batch`` for statistics computed from the batch, ``moving`` for stored ones."""
    node = terminal.node
    if node is None:
        arg = terminal.graph.args.get(terminal.name)
        return "moving" if arg is not None and arg[1] == _DT_RESOURCE else "unknown"
    if node.op in _VARIABLE_OPS:
        return "moving"
    if node.op in _BATCH_STAT_OPS or "/moments/" in node.name:
        return "batch"
    return "unknown"
