"""Benchmark: ``analyze_graph`` time against graph size (it should scale linearly).

Builds synthetic GraphDefs of 5k, 10k, 25k and 50k nodes (seed-004 style
BatchNorm layers: two ``FusedBatchNormV3`` behind a ``Switch``/``Merge`` on a
``training`` placeholder, moving-average updates wired into a train op,
separated by conv/relu filler) and times them side by side in one run. Prints
wall and process CPU time, ms per 10k nodes, and each size's per-node time
relative to the smallest size (about 1.0 everywhere means linear). Writes
``benchmarks/results/graph_analysis.json``.

    python benchmarks/graph_analysis.py [--quick | --smoke] [--out PATH]

``--smoke`` times 1k and 2k nodes once and writes JSON only with ``--out``.

``tests/graph/test_sites.py`` analyses the same generator's graphs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from tensorboard.compat.proto import attr_value_pb2, graph_pb2, tensor_pb2

from tb_bn_plugin.diagnostics.graph import analyze_graph

SIZES = (5_000, 10_000, 25_000, 50_000)
SMOKE_SIZES = (1_000, 2_000)
NODES_PER_LAYER = 50
MOMENTUM = 0.99
RESULTS = Path(__file__).resolve().parent / "results" / "graph_analysis.json"
_DT_FLOAT = 1


def _node(graph: graph_pb2.GraphDef, name: str, op: str, *inputs: str, **attrs) -> str:
    node = graph.node.add(name=name, op=op, input=list(inputs))
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return name


def _scalar(value: float) -> attr_value_pb2.AttrValue:
    tensor = tensor_pb2.TensorProto(dtype=_DT_FLOAT, float_val=[value])
    return attr_value_pb2.AttrValue(tensor=tensor)


def _batchnorm_layer(graph: graph_pb2.GraphDef, scope: str, x: str) -> tuple[str, str]:
    """One v1-cond fused BatchNorm layer; returns (output, update op)."""
    for variable in ("gamma", "beta", "moving_mean", "moving_variance"):
        _node(graph, f"{scope}/{variable}", "VariableV2")
    cond = f"{scope}/cond"
    _node(graph, f"{cond}/Switch", "Switch", "training", "training")
    _node(graph, f"{cond}/switch_t", "Identity", f"{cond}/Switch:1")
    _node(graph, f"{cond}/switch_f", "Identity", f"{cond}/Switch")
    _node(graph, f"{cond}/pred_id", "Identity", "training")
    empty = _node(graph, f"{cond}/Const", "Const", f"^{cond}/switch_t")
    outputs = []
    for suffix, training in (("", True), ("_1", False)):
        op = f"{cond}/FusedBatchNormV3{suffix}"
        port = ":1" if training else ""
        switch = _node(graph, f"{op}/Switch", "Switch", x, f"{cond}/pred_id")
        stats = (empty, empty) if training else (f"{scope}/moving_mean", f"{scope}/moving_variance")
        _node(
            graph,
            op,
            "FusedBatchNormV3",
            switch + port,
            f"{scope}/gamma",
            f"{scope}/beta",
            *stats,
            is_training=attr_value_pb2.AttrValue(b=training),
        )
        outputs.append(op)
    merge = _node(graph, f"{cond}/Merge", "Merge", outputs[1], outputs[0])
    batch_mean = _node(graph, f"{cond}/Merge_1", "Merge", outputs[1] + ":1", outputs[0] + ":1")
    avg = f"{scope}/AssignMovingAvg"
    decay = _node(graph, f"{avg}/decay", "Const", value=_scalar(1.0 - MOMENTUM))
    sub = _node(graph, f"{avg}/sub", "Sub", f"{scope}/moving_mean", batch_mean)
    mul = _node(graph, f"{avg}/mul", "Mul", sub, decay)
    update = _node(graph, avg, "AssignSub", f"{scope}/moving_mean", mul)
    return merge, update


def synthetic_graph_def(num_nodes: int) -> tuple[graph_pb2.GraphDef, int]:
    """A GraphDef of about ``num_nodes`` nodes and how many BatchNorm layers it has."""
    graph = graph_pb2.GraphDef()
    x = _node(graph, "input", "Placeholder")
    _node(graph, "training", "Placeholder")
    layers = max(1, num_nodes // NODES_PER_LAYER)
    updates = []
    for index in range(layers):
        x, update = _batchnorm_layer(graph, f"block{index}/bn", x)
        updates.append(update)
        filler = 0
        while len(graph.node) < (index + 1) * num_nodes // layers - 1:
            x = _node(graph, f"block{index}/act{filler}", "Relu" if filler % 2 else "Conv2D", x)
            filler += 1
    _node(graph, "train", "NoOp", *(f"^{update}" for update in updates))
    return graph, layers


def _time(graph: graph_pb2.GraphDef, repeats: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of ``analyze_graph`` and the sites found."""
    walls, cpus, sites = [], [], 0
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        sites = len(analyze_graph(graph))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), sites


def run(repeats: int, sizes: tuple[int, ...] = SIZES) -> list[dict]:
    rows = []
    for size in sizes:
        graph, layers = synthetic_graph_def(size)
        wall, cpu, sites = _time(graph, repeats)
        if sites != layers:
            raise SystemExit(f"{size} nodes: found {sites} BatchNorm sites, expected {layers}")
        nodes = len(graph.node)
        rows.append(
            {
                "nodes": nodes,
                "sites": sites,
                "wall_ms": 1e3 * wall,
                "cpu_ms": 1e3 * cpu,
                "wall_ms_per_10k_nodes": 1e7 * wall / nodes,
                "cpu_ms_per_10k_nodes": 1e7 * cpu / nodes,
            }
        )
    base = rows[0]["cpu_ms_per_10k_nodes"]
    for row in rows:
        row["per_node_ratio"] = row["cpu_ms_per_10k_nodes"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 repeat per size (under a minute)")
    mode.add_argument(
        "--smoke", action="store_true", help="1k and 2k nodes once: only checks the script works"
    )
    parser.add_argument("--repeats", type=int, default=5, help="repeats per size (median kept)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON output path (default: {RESULTS})"
    )
    args = parser.parse_args()
    repeats = 1 if args.quick or args.smoke else args.repeats
    rows = run(repeats, SMOKE_SIZES if args.smoke else SIZES)
    print(f"analyze_graph, median of {repeats} run(s) per size")
    print(
        f"{'nodes':>7} {'sites':>6} {'wall ms':>9} {'cpu ms':>9} {'ms/10k wall':>12} "
        f"{'ms/10k cpu':>11} {'per-node ratio':>15}"
    )
    for row in rows:
        print(
            f"{row['nodes']:>7} {row['sites']:>6} {row['wall_ms']:>9.1f} {row['cpu_ms']:>9.1f} "
            f"{row['wall_ms_per_10k_nodes']:>12.1f} {row['cpu_ms_per_10k_nodes']:>11.1f} "
            f"{row['per_node_ratio']:>15.2f}"
        )
    out = args.out or (None if args.smoke else RESULTS)
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "graph_analysis",
                "repeats": repeats,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
