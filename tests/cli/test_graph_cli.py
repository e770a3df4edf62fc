"""``tb-bn graph``: import a graph file into a run, print its BatchNorm sites and findings."""

from __future__ import annotations

import json

import pytest
import tensorflow as tf
from _bn_graphs import build_seed004_graph
from tensorboard import context
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer

from tb_bn_plugin.cli import main
from tb_bn_plugin.diagnostics.graph import NO_UPDATE_OPS
from tb_bn_plugin.reading import graph

NO_UPDATE_EVIDENCE = (
    "bn: training path bn/cond/FusedBatchNorm has no moving-average update in this graph"
)


@pytest.fixture(scope="module")
def seed004():
    return build_seed004_graph("FusedBatchNorm", freeze=True)


def _read_back(logdir, run):
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = tb_data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    return graph.read_run_graph(provider, context.RequestContext(), "", run)


def _node_names(graph_def):
    return [node.name for node in graph_def.node]


def test_cli_imports_frozen_graph(tmp_path, seed004, capsys):
    model = tmp_path / "frozen_seed004.pb"
    model.write_bytes(seed004.SerializeToString())
    assert main(["graph", str(model), "--logdir", str(tmp_path / "logs")]) == 0
    out = capsys.readouterr().out
    assert f"to {tmp_path / 'logs' / 'frozen_seed004'}" in out
    assert "BatchNorm sites: 1" in out
    assert "bn  [switch_merge, predicate training:0 via bn/cond/FusedBatchNorm/Switch]" in out
    assert "training:  bn/cond/FusedBatchNorm (FusedBatchNorm)" in out
    assert "inference: bn/cond/FusedBatchNorm_1 (FusedBatchNorm)" in out
    assert "[info] no-update-ops: Training path without moving-average updates\n" in out
    assert f"\n    {NO_UPDATE_EVIDENCE}\n    fix: {NO_UPDATE_OPS.fix}" in out
    assert _node_names(_read_back(tmp_path / "logs", "frozen_seed004")) == _node_names(seed004)


def test_cli_run_name_and_json(tmp_path, seed004, capsys):
    model = tmp_path / "model.pbtxt"
    tf.io.write_graph(seed004, str(tmp_path), "model.pbtxt", as_text=True)
    assert (
        main(["graph", str(model), "--logdir", str(tmp_path), "--run", "imported/seed", "--json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["run"] == "imported/seed"
    assert [site["name"] for site in data["sites"]] == ["bn"]
    assert data["sites"][0]["findings"] == ["no-update-ops"]
    # Findings keep their published shape: layers as "sites", evidence keyed by site.
    assert data["findings"] == [
        {
            "code": "no-update-ops",
            "severity": "info",
            "title": "Training path without moving-average updates",
            "sites": ["bn"],
            "evidence": {"bn": NO_UPDATE_EVIDENCE},
            "fix": NO_UPDATE_OPS.fix,
        }
    ]
    assert data["node_count"] == len(seed004.node) and data["function_count"] == 0
    assert _read_back(tmp_path, "imported/seed") is not None


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (lambda p: p.write_bytes(b"\x00garbage\xff"), [], "not a TensorFlow graph"),
        (lambda p: None, [], "cannot read"),
        (lambda p: p.write_bytes(b"x"), ["--run", "../outside"], "--run must be a relative name"),
    ],
)
def test_cli_errors(tmp_path, capsys, setup, extra, message):
    model = tmp_path / "model.pb"
    setup(model)
    assert main(["graph", str(model), "--logdir", str(tmp_path / "logs"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tb-bn: error:") and message in err
    assert not (tmp_path / "logs").exists()
