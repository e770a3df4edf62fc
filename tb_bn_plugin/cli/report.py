"""``tb-bn report``: the latest BatchNorm statistics and every diagnostic, per run and layer.

Usage::

    tb-bn report LOGDIR [--json] [--fail-on {info,warning,error,never}] [--run NAME ...]

Prints, for every run under LOGDIR that holds BN Internals data (written by
``BatchNormCallback``) or a graph (the callback's ``write_graph``, ``tb-bn
graph``), a table with one row per BatchNormalization layer at its latest
logged step, the train/inference gap if it was measured, for runs trained on
JAX or PyTorch the step functions and whether the train step applies the
moving-statistic updates, every finding of ``diagnostics.diagnose`` with its
evidence and fix, and the findings of the run's graph (its stored graph, else
its step-functions description: what the Graph view shows, read and diagnosed
by the same functions as the plugin's) with each site's logged layer.
``--json`` prints the same as one JSON object (schema below). ``--run``
(repeatable) restricts the report to the named runs.

Exit status: 0 when no finding at or above ``--fail-on`` severity fired
(default ``error``; ``never`` always gives 0), 1 when one did, 2 for usage
errors and unreadable input: a missing or empty LOGDIR, one without any BN
Internals data or graph, an unknown ``--run``, or event files that are corrupt
or truncated. In the last case the report of what could be read is printed
first (on stdout) and the error names every bad file (on stderr). Graph
findings count like the statistics ones (they are in ``findings``): a run
written by ``tb-bn graph`` whose update ops are not wired (warning) fails with
``--fail-on warning``, a malformed graph (error) with the default. A problem
found both in the logs and in the graph (``momentum-one``) is two findings.

JSON schema (``schema_version`` 1). Floats that are NaN or infinite are
written as the strings ``"nan"``, ``"inf"``, ``"-inf"``; ``null`` means not
logged / not measured::

    {
      "schema_version": 1,
      "logdir": str,
      "fail_on": "info" | "warning" | "error" | "never",
      "failed": bool,                  # a finding at or above fail_on fired (exit status 1)
      "counts": {"error": int, "warning": int, "info": int},   # over all runs
      "bad_files": [                   # event files that could not be read to their end
        {"path": str, "run": str, "kind": "truncated" | "corrupt" | "unreadable",
         "records_read": int, "offset": int | null, "detail": str}
      ],
      "runs": [
        {
          "run": str,                  # TensorBoard run name (directory relative to logdir)
          "errors": [str],             # data of this run that could not be decoded
          "gap": null | {              # latest train/inference gap on the probe batch
            "step": int, "train_loss": float, "inference_loss": float,
            "relative_loss_gap": float, # |inference - train| / |train|
            "loss_reference": float,    # largest training-mode probe loss of the run
            "scaled_loss_gap": float    # |inference - train| / max(|train|, 0.1 * reference)
          },
          "layers": [                  # in model order
            {
              "path": str, "index": int, "channels": int, "epsilon": float,
              "momentum": float | null,     # at the latest logged step
              "logged_steps": int,          # number of logged steps
              "first_step": int | null, "last_step": int | null,
              "mode": "train" | "inference" | null,
                  # what the layer normalised with at the last step:
                  # batch statistics ("train") or moving ones ("inference")
              "trainable": bool | null,
              "count": float | null,        # values per channel behind the latest batch stats
              "trained_step": int | null,   # latest step the layer normalised with batch stats
              "mean_shift": null | {"mean": float, "max": float},
                  # |batch_mean - moving_mean| / sqrt(moving_variance + eps) across channels,
                  # at trained_step
              "log_var_ratio": null | {"mean": float, "max_abs": float},
                  # log((batch_variance + eps) / (moving_variance + eps)) at trained_step
              "moving_mean": null | {"mean": float, "min": float, "max": float},
              "moving_variance": null | {"mean": float, "min": float, "max": float},
              "gap": null | {"local": float | null, "compound": float | null,
                             "attribution": float | null},  # at the run's gap step
              "calls": int,                 # calls per training step (> 1: a shared layer)
              "call_divergence": null | {"mean_shift": float, "log_var_ratio": float}
                  # shared layers, at the latest step with per-call statistics: the median
                  # over channels of numerics.moments.call_divergence (shared-layer's measure)
            }
          ],
          "step_functions": null | {   # runs trained on JAX or PyTorch (no TensorFlow graph)
            "backend": str, "train_function": str, "inference_function": str,
            "step": int,               # the training step the updates were observed in
            "updates_applied": {layer: bool | null}   # null: not decided
          },
          "has_graph": bool,           # a readable stored graph or step-functions description
                                       # (one that is not a GraphDef is listed in "errors")
          "findings": [                # diagnostics.Finding.to_json(): every finding that counts;
                                       # the statistics ones by severity then model order, then
                                       # the graph ones by severity (graph_findings, in order),
                                       # which name their graph sites in "layers"
            {"code": str, "severity": "error" | "warning" | "info", "title": str,
             "layers": [str], "channels": {layer: [int]}, "evidence": {str: number | str | bool},
             "fix": str}
          ],
          "graph_findings": [          # the graph's findings as the graph route publishes them
            {"code": str, "severity": "error" | "warning" | "info", "title": str,
             "sites": [str],           # op scopes (JAX, PyTorch: layer paths)
             "evidence": {str: str},   # site -> line; whole-graph findings: "1", "2", ...
             "fix": str,
             "site_layers": {site: layer}}  # the logged layer of each site with one
          ],
          "counts": {"error": int, "warning": int, "info": int}   # over findings
        }
      ]
    }

Rendering (``build_report``, ``render_text``, ``exit_status``) is pure and
separate from reading (``load_report_inputs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from tb_bn_plugin import metadata
from tb_bn_plugin.cli.errors import CommandError
from tb_bn_plugin.diagnostics import SEVERITY_ORDER, Finding, Thresholds, diagnose
from tb_bn_plugin.diagnostics.finding import severity_rank
from tb_bn_plugin.diagnostics.graph import (
    GraphReport,
    findings_with_site_layers,
    report_graph_or_step_functions,
)
from tb_bn_plugin.formatting import json_safe, text_table
from tb_bn_plugin.graph.layers import site_layers
from tb_bn_plugin.graph.load import GraphLoadError
from tb_bn_plugin.numerics.moments import call_divergence
from tb_bn_plugin.reading.event_files import BadFile, check_event_files, event_files
from tb_bn_plugin.series import LayerSeries, RunData

SCHEMA_VERSION = 1
# Least to most severe, then "never" (no finding fails the command).
FAIL_ON_CHOICES = (*reversed(SEVERITY_ORDER), "never")
TEXT_WIDTH = 100


# -- reading --------------------------------------------------------------------------


@dataclasses.dataclass
class ReportInputs:
    """What the report is built from: the runs read, their graphs' reports (``report_graph`` of a
    stored graph, ``report_step_functions`` of a JAX or PyTorch run's description) and the files
    that could not be read."""

    logdir: str
    runs: dict[str, RunData]
    bad_files: list[BadFile]
    graphs: dict[str, GraphReport] = dataclasses.field(default_factory=dict)


def load_report_inputs(logdir: str, runs: Optional[Sequence[str]] = None) -> ReportInputs:
    """Read ``logdir``; raise ``CommandError`` when there is nothing to report."""
    # TensorBoard imports: only when reading.
    from tb_bn_plugin.reading.graph import graph_versions, read_graph_or_step_functions
    from tb_bn_plugin.reading.load import load_runs
    from tb_bn_plugin.reading.provider import open_logdir

    if not os.path.exists(logdir):
        raise CommandError(f"log directory {logdir!r} does not exist")
    if not os.path.isdir(logdir):
        raise CommandError(f"{logdir!r} is not a directory")
    files = list(event_files(logdir))
    if not files:
        raise CommandError(
            f"no TensorBoard event files (events.out.tfevents*) under {logdir!r}: "
            "point at the log_dir given to BatchNormCallback"
        )
    bad_files = check_event_files(logdir)
    source = open_logdir(logdir)
    loaded = load_runs(source)
    with_graph = graph_versions(source)
    # A run with only a graph (written by ``tb-bn graph``) is reported too.
    loaded.update({name: RunData(run=name, layers={}) for name in with_graph if name not in loaded})
    if runs:
        unknown = [r for r in runs if r not in loaded]
        if unknown:
            available = ", ".join(sorted(loaded)) or "none"
            raise CommandError(
                f"no BN Internals data or graph for run(s) {', '.join(map(repr, unknown))} in "
                f"{logdir!r} (runs with BN data or a graph: {available})"
            )
        loaded = {r: loaded[r] for r in runs}
        bad_files = [b for b in bad_files if b.run in loaded]
    if not any(run.layers for run in loaded.values()) and not with_graph.keys() & loaded.keys():
        message = f"no BatchNorm data in {logdir!r}"
        if bad_files:
            message += "; " + _bad_files_message(bad_files)
        else:
            message += (
                f" ({len(files)} event file(s) hold no BN Internals records and no graph: log a "
                "model that has BatchNormalization layers with tb_bn_plugin.BatchNormCallback, or "
                "write a graph with tb-bn graph)"
            )
        raise CommandError(message)
    graphs = {}
    for name in sorted(with_graph.keys() & loaded.keys()):
        try:
            stored = read_graph_or_step_functions(source, name)
        except GraphLoadError as err:
            loaded[name].errors.append(str(err))
            continue
        if stored is not None:
            graphs[name] = report_graph_or_step_functions(stored)
    return ReportInputs(logdir, loaded, bad_files, graphs)


# -- building (pure) -------------------------------------------------------------------


def _column(layer: LayerSeries, stat: str, column: str, i: int) -> Optional[float]:
    if stat not in layer.summary or not len(layer.summary[stat]):
        return None
    return float(layer.summary_column(stat, column)[i])


def _info_at(layer: LayerSeries, field: str, i: int) -> Optional[float]:
    values = layer.info.get(field)
    if values is None or i >= len(values):
        return None
    value = float(values[i])
    return value if math.isfinite(value) else None


def layer_report(layer: LayerSeries, gap: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The JSON-safe summary of one layer at its latest logged step (schema: module docstring)."""
    config = layer.config
    n = len(layer.steps)
    last = n - 1
    training = _info_at(layer, "training", last) if n else None
    trainable = _info_at(layer, "trainable", last) if n else None
    trained = np.flatnonzero(np.asarray(layer.info.get("training", np.zeros(n)), dtype=float) > 0.5)
    t = int(trained[-1]) if trained.size else None
    entry: dict[str, Any] = {
        "path": config.path,
        "index": config.index,
        "channels": config.channels,
        "epsilon": json_safe(config.epsilon),
        "momentum": json_safe(_info_at(layer, "momentum", last) if n else config.momentum),
        "logged_steps": n,
        "first_step": int(layer.steps[0]) if n else None,
        "last_step": int(layer.steps[-1]) if n else None,
        "mode": None if training is None else ("train" if training > 0.5 else "inference"),
        "trainable": None if trainable is None else trainable > 0.5,
        "count": json_safe(_info_at(layer, "count", t)) if t is not None else None,
        "trained_step": int(layer.steps[t]) if t is not None else None,
        "mean_shift": None,
        "log_var_ratio": None,
        "moving_mean": None,
        "moving_variance": None,
        "gap": gap,
        "calls": 1,
        "call_divergence": None,
    }
    calls = layer.calls
    if calls is not None and len(calls.steps):
        shift, log_var = call_divergence(calls.mean[-1], calls.variance[-1], config.epsilon)
        entry["calls"] = calls.calls
        entry["call_divergence"] = {
            "mean_shift": json_safe(float(np.nanmedian(shift))),
            "log_var_ratio": json_safe(float(np.nanmedian(log_var))),
        }
    if t is not None and metadata.MEAN_SHIFT in layer.summary:
        entry["mean_shift"] = {
            "mean": json_safe(_column(layer, metadata.MEAN_SHIFT, "mean", t)),
            "max": json_safe(_column(layer, metadata.MEAN_SHIFT, "max", t)),
        }
    if t is not None and metadata.LOG_VAR_RATIO in layer.summary:
        low = _column(layer, metadata.LOG_VAR_RATIO, "min", t)
        high = _column(layer, metadata.LOG_VAR_RATIO, "max", t)
        entry["log_var_ratio"] = {
            "mean": json_safe(_column(layer, metadata.LOG_VAR_RATIO, "mean", t)),
            "max_abs": json_safe(max(abs(low), abs(high)) if None not in (low, high) else None),
        }
    for stat in (metadata.MOVING_MEAN, metadata.MOVING_VARIANCE):
        if n and stat in layer.summary:
            entry[stat] = {
                c: json_safe(_column(layer, stat, c, last)) for c in ("mean", "min", "max")
            }
    return entry


def _gap_report(run: RunData) -> tuple[Optional[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The run's latest gap and per-layer gap values (empty when the gap was not logged)."""
    if run.gap is None:
        return None, {}
    from tb_bn_plugin.diagnostics.gap import gap_summary

    summary = gap_summary(run.gap)
    if summary is None:
        return None, {}
    run_gap = {
        "step": summary.step,
        "train_loss": json_safe(summary.train_loss),
        "inference_loss": json_safe(summary.inference_loss),
        "relative_loss_gap": json_safe(summary.relative_loss_gap),
        "loss_reference": json_safe(summary.loss_reference),
        "scaled_loss_gap": json_safe(summary.scaled_loss_gap),
    }
    layers = {}
    for path in set(summary.local) | set(summary.compound) | set(summary.attribution):
        layers[path] = {
            "local": json_safe(summary.local.get(path)),
            "compound": json_safe(summary.compound.get(path)),
            "attribution": json_safe(summary.attribution.get(path)),
        }
    return run_gap, layers


def _counts(findings: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {s: sum(1 for f in findings if f["severity"] == s) for s in SEVERITY_ORDER}


def run_report(
    run: RunData, findings: Sequence[Finding], graph: Optional[GraphReport] = None
) -> dict[str, Any]:
    """One run's JSON-safe report; ``findings`` ends with ``graph``'s (``run_findings``)."""
    run_gap, layer_gaps = _gap_report(run)
    found = [f.to_json() for f in findings]
    return {
        "run": run.run,
        "errors": list(run.errors),
        "gap": run_gap,
        "layers": [
            layer_report(layer, layer_gaps.get(layer.config.path)) for layer in run.ordered_layers()
        ],
        "step_functions": _step_functions_report(run),
        "has_graph": graph is not None,
        "findings": found,
        "graph_findings": []
        if graph is None
        else findings_with_site_layers(graph.findings, site_layers(graph.sites, run.layers)),
        "counts": _counts(found),
    }


def _step_functions_report(run: RunData) -> Optional[dict[str, Any]]:
    described = run.step_functions
    if described is None:
        return None
    return {
        **described.functions_json(),
        "updates_applied": dict(zip(described.layers, described.updates_applied)),
    }


def run_findings(
    run: RunData, thresholds: Thresholds = Thresholds(), graph: Optional[GraphReport] = None
) -> list[Finding]:
    """The statistics findings of ``run`` by severity, then those of its ``graph`` (the report
    of its stored graph or step functions) by severity: every finding that counts."""
    findings = sorted(
        diagnose(run, thresholds), key=lambda finding: severity_rank(finding.severity)
    )
    return findings + (list(graph.findings) if graph is not None else [])


def fails(severity: str, fail_on: str) -> bool:
    """Whether a finding of ``severity`` is at or above the ``fail_on`` level."""
    if fail_on == "never":
        return False
    return SEVERITY_ORDER.index(severity) <= SEVERITY_ORDER.index(fail_on)


def build_report(
    logdir: str,
    runs: dict[str, RunData],
    bad_files: Sequence[BadFile] = (),
    fail_on: str = "error",
    thresholds: Thresholds = Thresholds(),
    graphs: Optional[dict[str, GraphReport]] = None,
) -> dict[str, Any]:
    """The whole report as a JSON-safe dict (schema in the module docstring).

    ``graphs``: the report of each run's stored graph or step functions
    (``ReportInputs.graphs``); their findings count like the statistics ones.
    """
    graphs = graphs or {}
    reports = [
        run_report(
            runs[name], run_findings(runs[name], thresholds, graphs.get(name)), graphs.get(name)
        )
        for name in sorted(runs)
    ]
    all_findings = [f for r in reports for f in r["findings"]]
    return {
        "schema_version": SCHEMA_VERSION,
        "logdir": logdir,
        "fail_on": fail_on,
        "failed": any(fails(f["severity"], fail_on) for f in all_findings),
        "counts": _counts(all_findings),
        "bad_files": [b.to_json() for b in bad_files],
        "runs": reports,
    }


def exit_status(report: dict[str, Any]) -> int:
    """1 when a finding at or above ``fail_on`` fired, else 0."""
    return 1 if report["failed"] else 0


# -- text rendering (pure) --------------------------------------------------------------


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "nan", "inf"
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):  # nested evidence, e.g. per layer
        return "{" + ", ".join(f"{k}: {_fmt(v, spec)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v, spec) for v in value) + "]"
    return format(value, spec)


def _range(stats: Optional[dict[str, Any]]) -> str:
    if stats is None:
        return "-"
    return f"{_fmt(stats['mean'])} [{_fmt(stats['min'])}, {_fmt(stats['max'])}]"


LAYER_COLUMNS = (
    ("layer", lambda l: l["path"] + (f" ({l['calls']} calls)" if l["calls"] > 1 else "")),
    ("ch", lambda l: _fmt(l["channels"])),
    ("momentum", lambda l: _fmt(l["momentum"], "g")),
    ("steps", lambda l: f"{l['logged_steps']} (last {_fmt(l['last_step'])})"),
    ("mode", lambda l: (l["mode"] or "-") + ("" if l["trainable"] in (None, True) else ", frozen")),
    ("count", lambda l: _fmt(l["count"], ".0f") if l["count"] is not None else "-"),
    (
        "shift mean/max",
        lambda l: (
            "-"
            if l["mean_shift"] is None
            else f"{_fmt(l['mean_shift']['mean'])}/{_fmt(l['mean_shift']['max'])}"
        ),
    ),
    (
        "|log var| max",
        lambda l: "-" if l["log_var_ratio"] is None else _fmt(l["log_var_ratio"]["max_abs"]),
    ),
    ("moving mean [min, max]", lambda l: _range(l["moving_mean"])),
    ("moving var [min, max]", lambda l: _range(l["moving_variance"])),
    ("local gap", lambda l: "-" if l["gap"] is None else _fmt(l["gap"]["local"])),
    ("compound gap", lambda l: "-" if l["gap"] is None else _fmt(l["gap"]["compound"])),
)


def _wrap(text: str, indent: str, width: int = TEXT_WIDTH) -> list[str]:
    return textwrap.wrap(
        text,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,
        break_on_hyphens=False,  # keep paths and names whole
    ) or [indent]


def _evidence(evidence: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v, '.4g')}" for k, v in evidence.items())


def render_findings(findings: Sequence[dict[str, Any]], width: int = TEXT_WIDTH) -> list[str]:
    """Findings grouped by code (in order of first appearance), each fix printed once."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for finding in findings:
        groups.setdefault(finding["code"], []).append(finding)
    lines = []
    for code, group in groups.items():
        severity = group[0]["severity"].upper()
        layers = [p for f in group for p in f["layers"]]
        lines.append(
            f"  {severity} {code}" + (f"  (layers: {', '.join(layers)})" if layers else "")
        )
        for finding in group:
            where = ", ".join(finding["layers"]) or "model"
            lines.extend(_wrap(f"- {where}: {finding['title']}", "    ", width))
            channels = {k: v for k, v in finding.get("channels", {}).items() if v}
            if channels:
                shown = "; ".join(
                    f"{k}: {', '.join(map(str, v[:16]))}{' ...' if len(v) > 16 else ''}"
                    for k, v in channels.items()
                )
                lines.extend(_wrap(f"channels: {shown}", "      ", width))
            lines.extend(_wrap(f"evidence: {_evidence(finding['evidence'])}", "      ", width))
        lines.extend(_wrap(f"fix: {group[0]['fix']}", "    ", width))
    return lines


def render_graph_findings(findings: Sequence[dict[str, Any]], width: int = TEXT_WIDTH) -> list[str]:
    """Graph findings (``graph_findings``), one line per site naming its logged layer."""
    lines = []
    for finding in findings:
        sites = finding["sites"]
        lines.append(
            f"  {finding['severity'].upper()} {finding['code']}"
            + (f"  (sites: {', '.join(sites)})" if sites else "")
        )
        lines.extend(_wrap(f"- {finding['title']}", "    ", width))
        for key, line in finding["evidence"].items():
            if key in sites:
                layer = finding["site_layers"].get(key)
                # Each site's evidence line starts with the site's name.
                line = line.removeprefix(f"{key}: ")
                key = f"site {key}" + (f" (layer {layer})" if layer else "")
                lines.extend(_wrap(f"{key}: {line}", "      ", width))
            else:  # whole-graph evidence, numbered lines
                lines.extend(_wrap(line, "      ", width))
        lines.extend(_wrap(f"fix: {finding['fix']}", "    ", width))
    return lines


def _gap_line(gap: Optional[dict[str, Any]]) -> str:
    if gap is None:
        return "  train/inference gap: not logged"
    relative = gap["relative_loss_gap"]
    return (
        f"  train/inference gap at step {gap['step']}: "
        f"probe loss {_fmt(gap['train_loss'], '.4g')} (training) "
        f"vs {_fmt(gap['inference_loss'], '.4g')} (inference), relative gap "
        f"{_fmt(relative, '.1%') if isinstance(relative, float) else _fmt(relative)}"
    )


def render_run(run: dict[str, Any], width: int = TEXT_WIDTH) -> list[str]:
    if not run["layers"] and run["has_graph"]:  # written by tb-bn graph
        lines = [f"== run {run['run']}: a graph, no BN Internals statistics"]
    else:
        lines = [f"== run {run['run']}: {len(run['layers'])} BatchNormalization layer(s)"]
        lines.append(_gap_line(run["gap"]))
    described = run.get("step_functions")
    if described is not None:
        answers = {True: "yes", False: "NO", None: "not decided"}
        applied = ", ".join(
            f"{layer} {answers[value]}" for layer, value in described["updates_applied"].items()
        )
        lines.extend(
            _wrap(
                f"step functions ({described['backend']}): training "
                f"{described['train_function']}, inference {described['inference_function']}; "
                f"moving-statistic updates applied by the train step (step "
                f"{described['step']}): {applied}",
                "  ",
                width,
            )
        )
    if run["layers"]:
        header = [name for name, _ in LAYER_COLUMNS]
        rows = [[cell(layer) for _, cell in LAYER_COLUMNS] for layer in run["layers"]]
        lines.extend(text_table(rows, header, indent="  "))
    for error in run["errors"]:
        lines.extend(_wrap(f"read error: {error}", "  ", width))
    counts = run["counts"]
    graph_found = run["graph_findings"]
    # ``findings`` ends with the graph findings, rendered with their sites below.
    statistics_found = run["findings"][: len(run["findings"]) - len(graph_found)]
    if run["findings"]:
        lines.append(
            "  findings: " + ", ".join(f"{counts[s]} {s}" for s in SEVERITY_ORDER if counts[s])
        )
        lines.extend(render_findings(statistics_found, width))
    else:
        lines.append("  findings: none")
    if graph_found:
        lines.append("  graph findings (Graph view):")
        lines.extend(render_graph_findings(graph_found, width))
    elif run["has_graph"]:
        lines.append("  graph findings: none")
    return lines


def render_text(report: dict[str, Any], width: int = TEXT_WIDTH) -> str:
    """The human-readable report."""
    counts = report["counts"]
    lines = [
        f"BatchNorm report for {report['logdir']}: {len(report['runs'])} run(s); findings: "
        + ", ".join(f"{counts[s]} {s}" for s in SEVERITY_ORDER),
        "",
    ]
    for run in report["runs"]:
        lines.extend(render_run(run, width))
        lines.append("")
    if report["bad_files"]:
        lines.append("unreadable event files (the report above shows what could be read):")
        for bad in report["bad_files"]:
            lines.extend(_wrap(f"- {BadFile(**bad).describe()}", "  ", width))
        lines.append("")
    if report["fail_on"] != "never":
        verdict = "FAIL" if report["failed"] else "ok"
        lines.append(f"{verdict}: fail-on {report['fail_on']}")
    return "\n".join(lines) + "\n"


def _bad_files_message(bad_files: Sequence[BadFile]) -> str:
    return f"{len(bad_files)} event file(s) could not be read completely: " + "; ".join(
        b.describe() for b in bad_files
    )


# -- the command ---------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    inputs = load_report_inputs(args.logdir, args.run)
    report = build_report(
        inputs.logdir, inputs.runs, inputs.bad_files, args.fail_on, graphs=inputs.graphs
    )
    if args.json:
        json.dump(report, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report))
    sys.stdout.flush()
    if inputs.bad_files:
        raise CommandError(_bad_files_message(inputs.bad_files))
    return exit_status(report)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="print the latest BN statistics and diagnostics per run and layer",
        description=(
            "Print, per run and BatchNormalization layer, the latest logged statistics and every "
            "diagnostic with its evidence and fix. Exit status 1 when a diagnostic at or above "
            "--fail-on fires, 2 for usage errors and unreadable input."
        ),
    )
    parser.add_argument("logdir", metavar="LOGDIR", help="log directory given to BatchNormCallback")
    parser.add_argument(
        "--json", action="store_true", help="print JSON (schema: tb_bn_plugin.cli.report)"
    )
    parser.add_argument(
        "--fail-on",
        choices=FAIL_ON_CHOICES,
        default="error",
        help=(
            "exit with status 1 when a diagnostic of this severity or worse fires (default: error)"
        ),
    )
    parser.add_argument(
        "--run",
        action="append",
        metavar="NAME",
        help="only this run (repeatable; default: all runs)",
    )
    parser.set_defaults(func=run_command)
    return parser
