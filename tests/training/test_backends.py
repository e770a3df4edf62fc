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
``tb-bn report`` and the plugin's routes over TensorBoard's Python loader,
including the graph view, which on these backends shows the two step
functions and whether the train step applied the moving-statistic updates
(``step_functions``): yes in ``healthy``, no in ``stale``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from urllib.parse import urlencode

import numpy as np
import pytest

from tb_bn_plugin.cli.main import main
from tb_bn_plugin.reading.load import load_runs, read_stats
from tb_bn_plugin.reading.provider import open_logdir

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_backend_worker.py")
# The real tensorboard process and headless Chromium of the plugin's tests (plugin/_browser.py).
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugin")
)
from _browser import (  # noqa: E402
    STARTUP_TIMEOUT_S,
    get_json,
    plugin_tab,
    requires_browser,
    tensorboard,
)


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


def _functions(backend: str, model_class: str) -> tuple[str, str]:
    """The step functions as Keras compiles them by default on ``backend``."""
    if backend == "jax":
        return f"jax.jit({model_class}.train_step)", f"jax.jit({model_class}.predict_step)"
    return f"{model_class}.train_step (eager)", f"{model_class}.predict_step (eager)"


def test_runs_read_back_like_tensorflow_runs(backend_logdir):
    stats = read_stats(backend_logdir)
    # The JAX worker also compiles steps with BatchNormLogger.jit (its logdir: logdir_jax*).
    jax_only = {"logger-jit", "logger-jit-stale"}
    jitted = jax_only if os.path.basename(backend_logdir).startswith("logdir_jax") else set()
    assert set(stats) == {"healthy", "stale", "cadence", "logger", "logger-counter"} | jitted
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
    assert "updates-not-applied" in codes["stale"]
    assert not {"stale-moving-stats", "updates-not-applied", "non-finite"} & codes["healthy"]
    # The step functions' finding is the run's graph finding (as in the plugin); sites are layers.
    (graph_finding,) = report["stale"]["graph_findings"]
    assert graph_finding["code"] == "updates-not-applied"
    assert graph_finding["site_layers"] == {"bn0": "bn0", "bn1": "bn1"}
    assert report["healthy"]["graph_findings"] == [] and report["healthy"]["has_graph"]
    backend = os.path.basename(backend_logdir).split("_")[1].rstrip("0123456789")
    for run, model_class, applied in (("healthy", "Functional", True), ("stale", "Stale", False)):
        described = report[run]["step_functions"]
        train, inference = _functions(backend, model_class)
        assert described["backend"] == backend
        assert (described["train_function"], described["inference_function"]) == (train, inference)
        assert described["updates_applied"] == {"bn0": applied, "bn1": applied}
    # The step the updates were observed in: the fit's first logged one (every 1 / every 2 steps).
    assert (
        report["healthy"]["step_functions"]["step"],
        report["stale"]["step_functions"]["step"],
    ) == (1, 2)
    # Custom loops: the loop's step in place of train_step, measured at the first logged step.
    loops = {"logger": (1, True), "logger-counter": (5, True)}
    if backend == "jax":
        loops.update({"logger-jit": (5, True), "logger-jit-stale": (5, False)})
    for run, (step, applied) in loops.items():
        described = report[run]["step_functions"]
        loop_step = "custom loop step (compiled by the loop)" if backend == "jax" else None
        loop_step = loop_step or "custom loop step (eager)"
        if run.startswith("logger-jit"):
            loop_step = "BatchNormLogger.jit(custom_loop.<locals>.step_function)"
        assert (described["train_function"], described["inference_function"]) == (
            loop_step,
            _functions(backend, "Functional")[1],
        )
        assert described["step"] == step, (run, described["step"])
        assert described["updates_applied"] == {"bn0": applied, "bn1": applied}, run
    if backend == "jax":  # the custom loop's dropped updates are the run's graph finding
        assert "updates-not-applied" in codes["logger-jit-stale"]
    main(["report", backend_logdir, "--run", "stale"])
    text = capsys.readouterr().out
    assert f"step functions ({backend})" in text and "bn0 NO, bn1 NO" in text


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
    assert "updates-not-applied" in response.get_data(as_text=True)

    # The graph view: no TensorFlow graph, the two step functions per BN site instead.
    runs = client.get("/data/plugin/bn_internals/runs").get_json()["runs"]
    has_graph = {r["run"]: r["has_graph"] for r in runs}
    # Every fit with BatchNormCallback describes its step functions (custom-loop runs do not).
    assert all(has_graph[run] for run in ("healthy", "stale", "cadence")), has_graph
    by_run = {r["run"]: {f["code"] for f in r["graph_findings"]} for r in runs}
    assert by_run["stale"] == {"updates-not-applied"} and by_run["healthy"] == set()
    backend = os.path.basename(backend_logdir).split("_")[1].rstrip("0123456789")
    for run, model_class, applied in (("healthy", "Functional", True), ("stale", "Stale", False)):
        response = client.get(f"/data/plugin/bn_internals/graph?run={run}")
        assert response.status_code == 200, response.get_data(as_text=True)
        graph = response.get_json()
        train, inference = _functions(backend, model_class)
        assert graph["step_functions"]["backend"] == backend
        assert [site["name"] for site in graph["sites"]] == ["bn0", "bn1"]
        for site in graph["sites"]:
            name = site["name"]
            assert site["kind"] == "separate_functions"
            assert site["training_path"] == [train, f"{name}/batch_moments"]
            assert site["inference_path"] == [inference, f"{name}/moving_statistics"]
            assert site["ops"][f"{name}/batch_moments"]["function"] == train
            assert site["update_ops"] == [
                f"{name}/moving_mean/update",
                f"{name}/moving_variance/update",
            ]
            assert site["updates_applied"] is applied and site["updates_wired"] is None
            assert site["momentum"] == 0.9
        codes = {f["code"]: f for f in graph["findings"]}
        if applied:
            assert codes == {}
        else:
            assert set(codes) == {"updates-not-applied"}
            assert codes["updates-not-applied"]["sites"] == ["bn0", "bn1"]
            assert train in codes["updates-not-applied"]["evidence"]["bn0"]


@requires_browser
def test_graph_view_in_headless_chromium(backend_logdir, tmp_path):
    """The Graph view of a run without a TensorFlow graph, in a real tensorboard and Chromium,
    naming the two step functions as each backend compiles them."""
    backend = os.path.basename(backend_logdir).split("_")[1].rstrip("0123456789")
    with tensorboard(backend_logdir, "false") as base:
        deadline = time.time() + STARTUP_TIMEOUT_S
        while time.time() < deadline:
            runs = get_json(base + "data/plugin/bn_internals/runs")["runs"]
            if {r["run"] for r in runs if r["has_graph"]} >= {"healthy", "stale"}:
                break
            time.sleep(1)
        with plugin_tab(base) as (page, frame):
            for run, model_class, wired in (
                ("stale", "Stale", "false"),
                ("healthy", "Functional", "true"),
            ):
                frame.evaluate(
                    "h => { location.hash = h; }", urlencode({"view": "graph", "run": run})
                )
                view = frame.wait_for_selector(
                    f'.graph-view[data-run="{run}"][data-backend={backend}]'
                )
                site = frame.wait_for_selector(
                    f'.site[data-site=bn0][data-wired="{wired}"] svg.site-graph'
                )
                ops = site.eval_on_selector_all(".node", "ns => ns.map(n => n.dataset.op)")
                train, predict = _functions(backend, model_class)
                assert train in ops and predict in ops
                assert "bn0/moving_mean/update" in ops
                assert site.query_selector(".node.path-training")
                assert site.query_selector(".node.path-inference")
                text = view.inner_text()
                assert f"No TensorFlow graph: trained on {backend}" in text
                assert "Find in Graphs tab" not in text  # nothing there for TensorBoard's tab
                if wired == "false":
                    assert "the train step does not apply the updates" in text
                    assert site.query_selector(".edge.update-unwired")
                    assert view.query_selector(".finding[data-code=updates-not-applied]")
                else:
                    assert "updates applied by the train step" in text
                    assert not view.query_selector(".finding")
                page.screenshot(path=str(tmp_path / f"graph-{run}.png"))
