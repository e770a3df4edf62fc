"""``tb-bn graph``: import a GraphDef or SavedModel into a run and list its BatchNorm sites.

    tb-bn graph MODEL.pb --logdir DIR [--run NAME] [--json]

Writes the graph as the run graph of ``DIR/NAME`` (default ``NAME``: the file
stem, or the SavedModel directory's name), where TensorBoard's Graphs tab and
the BN plugin find it, then prints the BatchNorm sites and findings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tb_bn_plugin.cli.errors import CommandError
from tb_bn_plugin.diagnostics.graph import GraphReport, report_graph
from tb_bn_plugin.graph import load
from tb_bn_plugin.graph.model import OpRef


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "graph",
        help="import a frozen/saved graph into a run and list its BatchNorm sites",
        description="Import a frozen or exported GraphDef (binary .pb or text .pbtxt), a "
        "MetaGraphDef or a SavedModel directory into a TensorBoard run, and print where "
        "its BatchNorm layers switch between training and inference.",
    )
    parser.add_argument("model", metavar="MODEL", help="GraphDef file or SavedModel directory")
    parser.add_argument("--logdir", required=True, help="TensorBoard log directory")
    parser.add_argument("--run", help="run name under --logdir (default: MODEL's file stem)")
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    model = Path(args.model)
    run_name = args.run if args.run is not None else (model.name if model.is_dir() else model.stem)
    run_path = Path(run_name)
    if not run_name or run_path.is_absolute() or ".." in run_path.parts:
        raise CommandError(f"--run must be a relative name inside --logdir, got {run_name!r}")
    try:
        graph_def = load.load_graph_def(model)
    except load.GraphLoadError as err:
        raise CommandError(str(err)) from None
    run_dir = Path(args.logdir) / run_path
    # Writing event files needs TensorFlow: imported here, so `tb-bn --help` stays instant.
    from tb_bn_plugin.summary import write_graph

    write_graph(graph_def, run_dir)
    report = report_graph(graph_def)
    if args.json:
        print(json.dumps({"run": run_name, **report.to_json()}, indent=2))
    else:
        print(
            f"Wrote a graph of {report.node_count} nodes ({report.function_count} library "
            f"functions) to {run_dir}"
        )
        print(format_report(report))
    return 0


def format_report(report: GraphReport) -> str:
    """A short human-readable summary of the sites and findings."""
    lines = [f"BatchNorm sites: {len(report.sites)}"]
    for site in report.sites:
        switch = f", predicate {site.predicate} via {site.switch_op}" if site.switch_op else ""
        lines.append(f"  {site.name}  [{site.kind}{switch}]")
        lines.append(f"    training:  {_refs(site.training_path)}")
        lines.append(f"    inference: {_refs(site.inference_path)}")
        if site.update_ops:
            wired = "wired" if site.updates_wired else "NOT wired"
            lines.append(f"    updates:   {len(site.update_ops)} op(s), {wired}")
        if site.momentum is not None:
            lines.append(f"    momentum:  {site.momentum:g}")
    for finding in report.findings:
        lines.append(f"[{finding.severity}] {finding.code}: {finding.title}")
        lines.extend(f"    {line}" for line in finding.evidence.values())
        lines.append(f"    fix: {finding.fix}")
    return "\n".join(lines)


def _refs(refs: list[OpRef]) -> str:
    described = (
        f"{ref.name} ({ref.op}, in {ref.function})" if ref.function else f"{ref.name} ({ref.op})"
        for ref in refs
    )
    return ", ".join(described) or "-"
