"""BatchNormCallback on Keras 3's JAX and PyTorch backends, with TensorFlow unimportable.

Each backend runs in a subprocess (``KERAS_BACKEND`` is fixed when Keras is first
imported) with ``_backend_worker.py``: exact batch statistics against numpy, the
moving statistics' EMA step by step, the train/inference gap (``probe_data`` and
the default first-batch probe) against the model computed in numpy, bit-identical
training with and without the callback (gap and attribution included), and seed
001's pitfall (moving-statistic updates dropped by the train step) still captured,
``precise_stats``, ``recalibrate``, ``PreciseStatsMonitor`` and
``BatchNormLogger`` (a hand-written loop in the backend's own form) against numpy,
and a few demo scenarios (``demo/train.py --backend``),
all without TensorFlow in that process. This process then
reads the runs it wrote as every TensorFlow run is read: ``read_stats``,
``tb-bn report`` and the plugin's routes over TensorBoard's Python loader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tb_bn_plugin.cli.main import main
from tb_bn_plugin.reading.load import load_runs, read_stats
from tb_bn_plugin.reading.provider import open_logdir

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_backend_worker.py")


@pytest.fixture(scope="module", params=["jax", "torch"])
def backend_logdirs(request, tmp_path_factory):
    """(the worker's logdir, its demo logdir) on one backend."""
    pytest.importorskip(request.param)
    logdir = str(tmp_path_factory.mktemp(f"logdir_{request.param}"))
    demo_logdir = str(tmp_path_factory.mktemp(f"demo_{request.param}"))
    env = dict(os.environ, KERAS_BACKEND=request.param, TB_BN_BLOCK_TENSORFLOW="1")
    result = subprocess.run(
        [sys.executable, WORKER, logdir, demo_logdir],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{request.param}: ok" in result.stdout
    return logdir, demo_logdir


@pytest.fixture
def backend_logdir(backend_logdirs):
    return backend_logdirs[0]


def test_runs_read_back_like_tensorflow_runs(backend_logdir):
    stats = read_stats(backend_logdir)
    assert set(stats) == {"healthy", "stale", "cadence", "logger", "logger-counter"}
    for run in stats.values():
        assert set(run) == {"bn0", "bn1"}
        assert run["bn0"]["batch_mean"][1].shape[1] == 5
    # The PreciseStatsMonitor's measurements, at each epoch end, are read like TensorFlow's.
    ema_error = load_runs(open_logdir(backend_logdir))["healthy"].ema_error
    assert set(ema_error) == {"bn0", "bn1"}
    assert list(ema_error["bn0"].steps) == [4, 8, 12]
    assert all(np.isfinite(v).all() for v in ema_error["bn0"].values.values())


def test_demo_scenarios_diagnosed_on_the_backend(backend_logdirs, capsys):
    """The demo's pitfalls are diagnosed as on TensorFlow, and its healthy run stays quiet."""
    status = main(["report", backend_logdirs[1], "--json", "--fail-on", "never"])
    assert status == 0
    findings = {r["run"]: r["findings"] for r in json.loads(capsys.readouterr().out)["runs"]}
    assert set(findings) == {"healthy", "stale-moving-stats"}
    assert [f for f in findings["healthy"] if f["severity"] in ("error", "warning")] == []
    errors = {f["code"] for f in findings["stale-moving-stats"] if f["severity"] == "error"}
    assert errors == {"stale-moving-stats", "uninitialized-moving-stats"}


def test_report_diagnoses_the_dropped_updates(backend_logdir, capsys):
    status = main(["report", backend_logdir, "--json", "--fail-on", "never"])
    assert status == 0
    report = {r["run"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    codes = {run: {f["code"] for f in r["findings"]} for run, r in report.items()}
    assert "stale-moving-stats" in codes["stale"]
    assert not {"stale-moving-stats", "non-finite"} & codes["healthy"]


def test_plugin_serves_the_runs(backend_logdir):
    from tensorboard import program
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_ingester
    from tensorboard.plugins.core import core_plugin
    from werkzeug.test import Client

    from tb_bn_plugin.plugin import loader

    tb = program.TensorBoard(plugins=[core_plugin.CorePluginLoader(), loader.BNInternalsLoader()])
    tb.configure(
        [
            "tensorboard",
            "--logdir",
            backend_logdir,
            "--reload_interval",
            "0",
            "--reload_task",
            "blocking",
        ]
    )
    ingester = data_ingester.LocalDataIngester(tb.flags)
    ingester.start()
    client = Client(
        application.TensorBoardWSGIApp(
            tb.flags,
            tb.plugin_loaders,
            ingester.data_provider,
            None,
            ingester.deprecated_multiplexer,
        )
    )
    response = client.get("/data/plugin/bn_internals/layer?run=healthy&layer=bn0")
    assert response.status_code == 200, response.get_data(as_text=True)
    response = client.get("/data/plugin/bn_internals/diagnostics?run=stale")
    assert response.status_code == 200
    assert "stale-moving-stats" in response.get_data(as_text=True)
