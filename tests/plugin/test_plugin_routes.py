"""The plugin's routes through TensorBoard's real WSGI app and data providers.

Event files come from the real ``BatchNormCallback`` in a short ``fit`` (16
logged steps, more than the 10 samples TensorBoard keeps of an unknown
plugin's tensors by default). Every route test runs against both loaders:
the Python ``EventMultiplexer`` and the Rust data server (skipped when
``tensorboard_data_server`` is not installed). Numbers are checked against
``read_stats``/``read_gap`` and numpy.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import threading
import time
from urllib.parse import urlencode

import numpy as np
import pytest
from _plugin_logdir import HOSTILE, LAYERS, LOGGED_STEPS, tfrecords, write_logdir
from tensorboard import context, errors, program
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_ingester, plugin_event_multiplexer
from tensorboard.data import server_ingester
from tensorboard.plugins.core import core_plugin
from werkzeug.test import Client

from tb_bn_plugin import metadata, records
from tb_bn_plugin.numerics import drift
from tb_bn_plugin.numerics.ema import EmaError
from tb_bn_plugin.plugin import loader
from tb_bn_plugin.plugin.routes import params, runs
from tb_bn_plugin.plugin.routes.compare import COMPARE_STATS, compare_impl
from tb_bn_plugin.plugin.routes.graph import graph_impl
from tb_bn_plugin.plugin.routes.layer import layer_impl
from tb_bn_plugin.reading.cache import SeriesCache
from tb_bn_plugin.reading.load import load_runs, read_gap, read_stats
from tb_bn_plugin.reading.provider import ExperimentSource, MultiplexerProvider, open_logdir
from tb_bn_plugin.series import LayerConfig

PREFIX = "/data/plugin/bn_internals/"
# Routes round to 7 significant digits (the float32 precision of the records).
RTOL = 1e-6


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("logdir"))
    write_logdir(root)
    return root


@pytest.fixture(scope="module")
def stats(logdir):
    return read_stats(logdir)


def tensorboard_flags(logdir: str, *argv: str):
    """Flags and plugin loaders as ``tensorboard --logdir ...`` makes them, ``fix_flags`` run."""
    tb = program.TensorBoard(plugins=[core_plugin.CorePluginLoader(), loader.BNInternalsLoader()])
    tb.configure(
        [
            "tensorboard",
            "--logdir",
            logdir,
            "--reload_interval",
            "0",
            "--reload_task",
            "blocking",
            # No background overviews unless a test asks (``argv`` comes last and wins).
            "--bn_internals_warm_interval",
            "0",
            *argv,
        ]
    )
    return tb.flags, tb.plugin_loaders


def _wait_until_loaded(provider, timeout: float = 60.0) -> None:
    """The data server loads in the background: wait until its listing stops changing."""
    deadline, previous = time.time() + timeout, None
    while time.time() < deadline:
        listing = provider.list_tensors(None, experiment_id="", plugin_name=metadata.PLUGIN_NAME)
        current = sorted(
            (run, tag, s.max_step) for run, tags in listing.items() for tag, s in tags.items()
        )
        if current and current == previous:
            return
        previous = current
        time.sleep(0.5)
    raise TimeoutError("the data server did not finish loading")


class App:
    """TensorBoard's WSGI app over one loader; ``close`` stops a data server."""

    def __init__(self, logdir: str, loader: str, *argv: str, sampling_fix: bool = True) -> None:
        flags, loaders = tensorboard_flags(logdir, *argv)
        self.loader = loader
        if not sampling_fix:  # as if BNInternalsLoader.fix_flags had not run
            del flags.samples_per_plugin[metadata.PLUGIN_NAME]
        self._stop = lambda: None
        if loader == "python":
            ingester = data_ingester.LocalDataIngester(flags)
            ingester.start()
            provider, multiplexer = ingester.data_provider, ingester.deprecated_multiplexer
        else:
            try:
                binary = server_ingester.get_server_binary()
            except server_ingester.NoDataServerError as err:
                pytest.skip(f"tensorboard_data_server is not installed: {err}")
            ingester = server_ingester.SubprocessServerDataIngester(
                server_binary=binary,
                logdir=flags.logdir,
                reload_interval=flags.reload_interval,
                channel_creds_type=flags.grpc_creds_type,
                samples_per_plugin=flags.samples_per_plugin,
            )
            ingester.start()
            self._stop = ingester._stdin_handle.close  # the server runs with --die-after-stdin
            _wait_until_loaded(ingester.data_provider)
            provider, multiplexer = ingester.data_provider, None
        self.multiplexer = multiplexer
        self.client = Client(
            application.TensorBoardWSGIApp(flags, loaders, provider, None, multiplexer)
        )

    def get(self, route: str, expected: int = 200, **params):
        query = "?" + urlencode(params, doseq=True) if params else ""
        response = self.client.get(PREFIX + route + query)
        assert response.status_code == expected, response.get_data(as_text=True)
        assert response.headers["Content-Type"] == "application/json"
        return json.loads(response.get_data(as_text=True), parse_constant=_reject_constant)

    def close(self) -> None:
        self._stop()


def _reject_constant(name: str):
    raise AssertionError(f"non-standard JSON constant {name}")


@pytest.fixture(scope="module", params=["python", "rust"])
def app(request, logdir):
    tb = App(logdir, request.param)
    yield tb
    tb.close()


# -- loading --------------------------------------------------------------------


def test_loader_keeps_every_sample_unless_the_user_chose(tmp_path):
    flags, _ = tensorboard_flags(str(tmp_path))
    assert flags.samples_per_plugin == {"bn_internals": 0}
    flags, _ = tensorboard_flags(str(tmp_path), "--samples_per_plugin", "images=3,bn_internals=5")
    assert flags.samples_per_plugin == {"images": 3, "bn_internals": 5}


def test_plugin_is_registered_as_a_dynamic_tensorboard_plugin():
    from tensorboard import default

    assert loader.BNInternalsLoader in default.get_dynamic_plugins()


@pytest.fixture(scope="module")
def long_logdir(tmp_path_factory):
    """One layer, 150 logged steps (summary records only), written with the SummaryWriter."""
    from tb_bn_plugin.summary import SummaryWriter

    root = str(tmp_path_factory.mktemp("long"))
    config = LayerConfig(
        path="bn",
        index=0,
        channels=2,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
    )
    writer = SummaryWriter(os.path.join(root, "train"))
    rng = np.random.default_rng(0)
    info = {"training": 1.0, "trainable": 1.0, "count": 64.0, "momentum": 0.99, "full": 0.0}
    for step in range(1, 151):
        values = {stat: rng.uniform(0.5, 1.5, 2) for stat in config.stats()}
        (record,) = records.summary_records([config], [values], [info])
        writer.write(
            metadata.layer_tag(config.path, metadata.SUFFIX_SUMMARY),
            record,
            step,
            records.layer_summary_content(config),
        )
    writer.close()
    return root


@pytest.mark.parametrize("loader, default_samples", [("python", 10), ("rust", 100)])
def test_the_loader_keeps_every_sample_tensorboard_would_drop(long_logdir, loader, default_samples):
    """TensorBoard's own default keeps 10 (Python loader) or 100 (data server) samples per tag."""
    for sampling_fix, expected in ((False, default_samples), (True, 150)):
        tb = App(long_logdir, loader, sampling_fix=sampling_fix)
        try:
            steps = tb.get("layer", run="train", layer="bn")["steps"]
            assert len(steps) == expected and steps[-1] == 150
            (run,) = tb.get("runs")["runs"]
            assert run["layers"][0]["num_steps"] == expected
        finally:
            tb.close()


@pytest.mark.parametrize("loader", ["python", "rust"])
def test_user_samples_per_plugin_is_respected(logdir, loader):
    tb = App(logdir, loader, "--samples_per_plugin", "bn_internals=5")
    try:
        body = tb.get("layer", run="train", layer="block1_bn")
        assert len(body["steps"]) == 5 and body["steps"][-1] == 32
    finally:
        tb.close()


def test_plugin_listing(app):
    response = app.client.get("/data/plugins_listing")
    entry = json.loads(response.get_data())["bn_internals"]
    assert entry["enabled"] and entry["tab_name"] == "BN Internals"
    assert entry["loading_mechanism"] == {
        "type": "IFRAME",
        "module_path": "/data/plugin/bn_internals/index.js",
    }


# -- runs -----------------------------------------------------------------------


def test_runs_overview(app, stats):
    runs = {r["run"]: r for r in app.get("runs")["runs"]}
    assert {"train", HOSTILE, "truncated"} <= set(runs)
    train = runs["train"]
    assert train["has_graph"] and runs[HOSTILE]["has_graph"] and not runs["truncated"]["has_graph"]
    assert train["errors"] == []
    assert [layer["path"] for layer in train["layers"]] == list(LAYERS)
    assert train["gap"]["step"] == 32 and set(train["gap"]["metrics"]) == {"mae"}
    for layer in train["layers"]:
        assert layer["num_steps"] == len(LOGGED_STEPS) and layer["last_step"] == 32
        assert len(layer["sparkline"]["steps"]) == len(LOGGED_STEPS) <= 64
        assert {d["severity"] for d in layer["diagnostics"]} <= {"info", "warning", "error"}
    block1, head, frozen = train["layers"]
    assert (block1["center"], head["center"], head["momentum"], head["channels"]) == (
        True,
        False,
        0.9,
        4,
    )
    assert block1["training"] and not frozen["training"] and not frozen["trainable"]
    s = stats["train"]["block1_bn"]
    shift = drift.normalized_mean_shift(
        s["batch_mean"][1], s["moving_mean"][1], s["moving_variance"][1], 1e-3
    )
    np.testing.assert_allclose(block1["drift"], shift[-1].mean(), rtol=1e-5)
    np.testing.assert_allclose(block1["sparkline"]["values"], shift.mean(axis=1), rtol=1e-5)
    assert frozen["drift"] is None and set(frozen["sparkline"]["values"]) == {None}
    assert "frozen-bn" in {d["code"] for d in frozen["diagnostics"]}
    assert block1["local_gap"] is not None and frozen["compound_gap"] is not None


def test_overview_counts_every_step_when_it_samples(app, monkeypatch):
    monkeypatch.setattr(runs, "OVERVIEW_POINTS", 5)
    (train,) = [r for r in app.get("runs")["runs"] if r["run"] == "train"]
    for layer in train["layers"]:
        assert layer["num_steps"] == len(LOGGED_STEPS) and layer["last_step"] == 32


# -- layer ----------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_route_matches_read_stats(app, stats, layer):
    body = app.get("layer", run="train", layer=layer, resolution=1000)
    s = stats["train"][layer]
    steps = s["moving_mean"][0]
    assert body["steps"] == body["channel_steps"] == LOGGED_STEPS == steps.tolist()
    config = body["config"]
    assert set(config) == {
        "path",
        "index",
        "channels",
        "axis",
        "momentum",
        "epsilon",
        "center",
        "scale",
        "synchronized",
        "renorm",
    }
    expected_stats = {
        "batch_mean",
        "batch_variance",
        "moving_mean",
        "moving_variance",
        "gamma",
        "beta",
        "mean_shift",
        "log_var_ratio",
    } - ({"beta"} if layer == "head_bn" else set())
    assert set(body["summary"]) == expected_stats
    for stat in ("moving_mean", "moving_variance", "gamma"):
        values = s[stat][1]
        summary = body["summary"][stat]
        np.testing.assert_allclose(summary["mean"], values.mean(axis=1), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(summary["std"], values.std(axis=1), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(summary["min"], values.min(axis=1), rtol=RTOL)
        np.testing.assert_allclose(summary["p50"], np.median(values, axis=1), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(summary["max"], values.max(axis=1), rtol=RTOL)
    eps = config["epsilon"]
    shift = drift.normalized_mean_shift(
        s["batch_mean"][1], s["moving_mean"][1], s["moving_variance"][1], eps
    )
    ratio = drift.log_variance_ratio(s["batch_variance"][1], s["moving_variance"][1], eps)
    np.testing.assert_allclose(_floats(body["heatmaps"]["mean_shift"]), shift.T, rtol=1e-5)
    np.testing.assert_allclose(
        _floats(body["heatmaps"]["log_var_ratio"]), ratio.T, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        _floats(body["summary"]["mean_shift"]["mean"]), shift.mean(axis=1), rtol=1e-5
    )
    np.testing.assert_allclose(
        body["ema_initial_weight"], np.power(config["momentum"], steps), rtol=RTOL
    )
    assert body["info"]["momentum"] == [config["momentum"]] * len(steps)
    assert body["info"]["training"] == [0.0 if layer == "frozen_bn" else 1.0] * len(steps)
    assert body["channel"] is None
    assert body["ema_error"] is None  # no PreciseStatsMonitor in this run


def test_frozen_layer_batch_statistics_are_null(app):
    body = app.get("layer", run="train", layer="frozen_bn")
    for stat in ("batch_mean", "mean_shift", "log_var_ratio"):
        assert all(set(column) == {None} for column in body["summary"][stat].values())
    assert {v for row in body["heatmaps"]["mean_shift"] for v in row} == {None}
    assert None not in body["summary"]["moving_mean"]["mean"]


def test_layer_channel(app, stats):
    body = app.get("layer", run="train", layer="block1_bn", resolution=1000, channel=5)
    assert body["channel"]["index"] == 5
    values = body["channel"]["values"]
    assert set(values) == {
        "batch_mean",
        "batch_variance",
        "moving_mean",
        "moving_variance",
        "gamma",
        "beta",
        "mean_shift",
        "log_var_ratio",
    }
    for stat in ("batch_mean", "moving_variance", "beta"):
        np.testing.assert_allclose(
            values[stat], stats["train"]["block1_bn"][stat][1][:, 5], rtol=RTOL
        )
    np.testing.assert_allclose(values["mean_shift"], _floats(body["heatmaps"]["mean_shift"])[5])


def test_layer_resolution_samples_at_read_keeping_the_last(app, stats):
    logged = stats["train"]["block1_bn"]["moving_mean"][0].tolist()
    body = app.get("layer", run="train", layer="block1_bn", resolution=4)
    assert len(body["steps"]) == len(body["channel_steps"]) == 4
    assert body["steps"][-1] == body["channel_steps"][-1] == logged[-1]
    assert body["steps"] == sorted(set(body["steps"])) and set(body["steps"]) <= set(logged)
    if app.loader == "python":  # evenly spaced over TensorBoard's Python loader
        assert body["steps"] == body["channel_steps"] == [2, 12, 22, 32]
    assert all(len(column) == 4 for column in body["summary"]["moving_mean"].values())
    assert len(body["ema_initial_weight"]) == 4 and len(body["info"]["count"]) == 4
    assert [len(row) for row in body["heatmaps"]["mean_shift"]] == [4] * 6
    # The values at the sampled steps are those logged there.
    moving = _floats(body["summary"]["moving_mean"]["mean"])
    at = [logged.index(step) for step in body["steps"]]
    np.testing.assert_allclose(
        moving, stats["train"]["block1_bn"]["moving_mean"][1][at].mean(axis=1), rtol=1e-5, atol=1e-6
    )
    assert app.get("layer", run="train", layer="block1_bn", resolution=4) == body
    two = app.get("layer", run="train", layer="block1_bn", resolution=2)["steps"]
    assert len(two) == 2 and two[-1] == logged[-1]


@pytest.fixture(scope="module")
def monitor_run(tmp_path_factory):
    """A 3-epoch fit logged by ``BatchNormCallback`` and ``PreciseStatsMonitor`` (each epoch, on a
    held sample).

    Returns (logdir, the monitor, layer ``bn1`` (it normalises the input), the held sample).
    """
    import tensorflow as tf

    from tb_bn_plugin import BatchNormCallback, PreciseStatsMonitor

    keras = tf.keras
    keras.utils.set_random_seed(0)
    root = str(tmp_path_factory.mktemp("monitor"))
    inp = keras.Input((4,))
    h = keras.layers.BatchNormalization(name="bn1", momentum=0.9)(inp)
    h = keras.layers.Dense(3)(h)
    h = keras.layers.BatchNormalization(name="bn2", momentum=0.9)(h)
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 4)) * [1, 2, 3, 4] + [5, -1, 0, 2]).astype("float32")
    held = x[:24]
    monitor = PreciseStatsMonitor(root, held, batch_size=8)
    model.fit(
        x,
        rng.normal(size=(64, 1)).astype("float32"),
        batch_size=8,
        epochs=3,
        verbose=0,
        callbacks=[BatchNormCallback(root, log_every_n_steps=2), monitor],
    )
    return root, monitor, model.get_layer("bn1"), held


@pytest.mark.parametrize("loader", ["python", "rust"])
def test_layer_route_ema_error_matches_the_monitor(monitor_run, loader):
    root, monitor, bn1, held = monitor_run
    tb = App(root, loader)
    try:
        bodies = {path: tb.get("layer", run="train", layer=path) for path in ("bn1", "bn2")}
        thinned = tb.get("layer", run="train", layer="bn1", resolution=2)["ema_error"]
    finally:
        tb.close()
    steps = [step for step, _ in monitor.history]
    assert steps == [8, 16, 24]
    for path, body in bodies.items():
        ema = body["ema_error"]
        assert ema["steps"] == steps and list(ema["fields"]) == list(EmaError.FIELDS)
        logged = np.column_stack([ema["fields"][field] for field in EmaError.FIELDS])
        np.testing.assert_allclose(
            logged, [errors[path].as_array() for _, errors in monitor.history], rtol=RTOL
        )
        assert ema["thresholds"] == {"max_mean_shift": 0.5, "max_abs_log_var_ratio": math.log(2.0)}
    # Independent numpy: bn1's input is the held sample itself; the last measurement ends training.
    x, eps = held.astype(np.float64), bn1.epsilon
    shift = np.abs(bn1.moving_mean.numpy() - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + eps)
    log_ratio = np.abs(np.log((bn1.moving_variance.numpy() + eps) / (x.var(axis=0) + eps)))
    last = [bodies["bn1"]["ema_error"]["fields"][field][-1] for field in EmaError.FIELDS]
    np.testing.assert_allclose(
        last, [shift.mean(), shift.max(), log_ratio.mean(), log_ratio.max()], rtol=1e-5
    )
    # Sampled at read like every series of the route: the last kept, evenly spaced (Python loader).
    assert (
        len(thinned["steps"]) == 2
        and thinned["steps"][-1] == 24
        and set(thinned["steps"]) <= set(steps)
    )
    if loader == "python":
        assert thinned["steps"] == [8, 24]
    kept = [steps.index(step) for step in thinned["steps"]]
    assert thinned["fields"]["mean_shift"] == [
        bodies["bn1"]["ema_error"]["fields"]["mean_shift"][i] for i in kept
    ]


def test_layer_impl_reads_only_the_layers_own_tags(monitor_run, monkeypatch):
    source = open_logdir(monitor_run[0])
    calls: list[set[str]] = []
    read = source.provider.read_tensor_events

    def spy(*args, **kwargs):
        calls.append(set(kwargs["run_tag_filter"].tags))
        return read(*args, **kwargs)

    monkeypatch.setattr(source.provider, "read_tensor_events", spy)
    assert layer_impl(source, "train", "bn2")["ema_error"]["steps"] == [8, 16, 24]
    # One provider call (a narrow layer's heatmap samples like the summaries), its own tags only.
    assert calls == [
        {
            metadata.layer_tag("bn2", suffix)
            for suffix in (
                metadata.SUFFIX_SUMMARY,
                metadata.SUFFIX_CHANNELS,
                metadata.SUFFIX_EMA_ERROR,
            )
        }
    ], calls


# -- errors and hostile input ---------------------------------------------------


@pytest.mark.parametrize(
    "route, params, code",
    [
        ("layer", {"layer": "block1_bn"}, 400),
        ("layer", {"run": "train"}, 400),
        ("layer", {"run": "train", "layer": ""}, 400),
        ("layer", {"run": "train", "layer": "block1_bn", "resolution": "abc"}, 400),
        ("layer", {"run": "train", "layer": "block1_bn", "resolution": "1.5"}, 400),
        ("layer", {"run": "train", "layer": "block1_bn", "resolution": "1"}, 400),
        ("layer", {"run": "train", "layer": "block1_bn", "resolution": "10000000"}, 400),
        ("layer", {"run": "train", "layer": "block1_bn", "channel": "-1"}, 400),
        ("layer", {"run": "train", "layer": "block1_bn", "channel": "6"}, 400),
        ("layer", {"run": "train", "layer": "block1_bn", "channel": "x"}, 400),
        ("layer", {"run": "nope", "layer": "block1_bn"}, 404),
        ("layer", {"run": "train", "layer": "nope"}, 404),
        ("layer", {"run": "garbage", "layer": "block1_bn"}, 404),
        ("gap", {}, 400),
        ("gap", {"run": "nope"}, 404),
        ("graph", {}, 400),
        ("graph", {"run": "nope"}, 404),
        ("graph", {"run": "truncated"}, 404),
        ("diagnostics", {"run": "nope"}, 404),
        ("compare", {"layer": "block1_bn"}, 400),
        ("compare", {"run": "train"}, 400),
        ("compare", {"layer": "block1_bn", "run": ["train", ""]}, 400),
        ("compare", {"layer": "block1_bn", "run": ["train", "train"]}, 400),
        ("compare", {"layer": "block1_bn", "run": "train", "resolution": "x"}, 400),
        ("compare", {"layer": "block1_bn", "run": ["train", "nope"]}, 404),
        ("compare", {"layer": "nope", "run": "train"}, 404),
    ],
)
def test_bad_requests_answer_json_errors(app, route, params, code):
    body = app.get(route, code, **params)
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize(
    "path",
    [
        "../loader.py",
        "../../setup.py",
        "%2e%2e/loader.py",
        "..%2fbn_plugin.py",
        "./index.js",
        "%2fetc%2fpasswd",
        "static",
        "nope.js",
        "index.js%00.png",
    ],
)
def test_static_files_stay_inside_static(app, path):
    response = app.client.get(PREFIX + path)
    assert response.status_code == 404
    assert "error" in json.loads(response.get_data())


def test_index_js_is_served(app):
    response = app.client.get(PREFIX + "index.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/javascript")
    with open(os.path.join(loader.STATIC_DIR, "index.js"), "rb") as f:
        assert response.get_data() == f.read()


def test_hostile_run_name_is_plain_json_text(app, stats):
    response = app.client.get(PREFIX + "layer?" + urlencode({"run": HOSTILE, "layer": "head_bn"}))
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.get_data(as_text=True).startswith(
        '{"run":"<img src=x onerror=alert(1)>","layer":"head_bn"'
    )
    (run,) = [r for r in app.get("runs")["runs"] if r["run"] == HOSTILE]
    assert [layer["path"] for layer in run["layers"]] == list(LAYERS)
    assert {d["run"] for d in app.get("diagnostics", run=HOSTILE)["diagnostics"]} == {HOSTILE}


def test_corrupt_event_files_do_not_break_other_runs(app, stats):
    runs = {r["run"]: r for r in app.get("runs")["runs"]}
    assert not runs.get("garbage", {"layers": []})["layers"]
    truncated = app.get("layer", run="truncated", layer="block1_bn")
    assert 0 < len(truncated["steps"]) < len(LOGGED_STEPS)
    assert truncated["steps"] == LOGGED_STEPS[: len(truncated["steps"])]
    full = app.get("layer", run="train", layer="block1_bn")
    n = len(truncated["steps"])
    assert truncated["summary"]["moving_mean"]["mean"] == full["summary"]["moving_mean"]["mean"][:n]
    assert len(full["steps"]) == len(LOGGED_STEPS)
    # The Python loader lists the garbage run (with no data), the Rust data server does not list it.
    response = app.client.get(PREFIX + "gap?run=garbage")
    assert (response.status_code, json.loads(response.get_data()).get("steps")) in (
        (200, []),
        (404, None),
    )


# -- gap, diagnostics, graph ----------------------------------------------------


def test_gap_route_matches_read_gap(app, logdir):
    gap = read_gap(logdir)["train"]
    body = app.get("gap", run="train")
    assert body["steps"] == gap.steps.tolist() == [1, 16, 32]  # after step 1, epoch ends
    np.testing.assert_allclose(body["train_loss"], gap.train_loss, rtol=RTOL)
    np.testing.assert_allclose(body["inference_loss"], gap.inference_loss, rtol=RTOL)
    np.testing.assert_allclose(
        body["metrics"]["mae"]["inference"], gap.metrics["mae"]["inference"], rtol=RTOL
    )
    assert set(body["layers"]) == set(LAYERS)
    for path in LAYERS:
        assert set(body["layers"][path]) == {"compound", "local", "local_derived", "attribution"}
        np.testing.assert_allclose(body["layers"][path]["compound"], gap.compound[path], rtol=RTOL)
        assert body["layers"][path]["attribution"] == [None] * 3  # not measured by default


def test_diagnostics_route(app):
    everything = app.get("diagnostics")["diagnostics"]
    assert {d["run"] for d in everything} >= {"train", HOSTILE}
    train = app.get("diagnostics", run="train")["diagnostics"]
    assert train == [d for d in everything if d["run"] == "train"]
    for finding in train:
        assert set(finding) == {
            "run",
            "code",
            "severity",
            "title",
            "layers",
            "channels",
            "evidence",
            "fix",
        }
        assert finding["severity"] in ("info", "warning", "error") and finding["fix"]
        assert set(finding["layers"]) <= set(LAYERS)
        assert all(isinstance(v, (int, float, str)) for v in finding["evidence"].values())
    assert {"frozen-bn", "slow-momentum"} <= {d["code"] for d in train}


def test_compare_route_answers_one_series_per_run(app):
    both = [HOSTILE, "train"]
    body = app.get("compare", layer="block1_bn", run=both, resolution=8)
    assert body["layer"] == "block1_bn" and [r["run"] for r in body["runs"]] == both
    for series in body["runs"]:
        # The same summaries as the layer route at that resolution, for the compared statistics.
        layer = app.get("layer", run=series["run"], layer="block1_bn", resolution=8)
        assert series["steps"] == layer["steps"] and len(series["steps"]) == 8
        assert series["steps"][-1] == LOGGED_STEPS[-1]
        assert set(series["summary"]) == set(COMPARE_STATS)
        assert all(series["summary"][s] == layer["summary"][s] for s in COMPARE_STATS)
        assert series["momentum"] == layer["config"]["momentum"] and series["channels"] == 6
    # A run that does not exist is named, like a run without the layer.
    missing = app.get("compare", 404, layer="block1_bn", run=["train", "nope"])
    assert missing["error"] == "unknown run 'nope'"
    truncated = app.get("compare", 404, layer="nope", run=["train"])
    assert truncated["error"] == "run 'train' has no readable layer 'nope'"


def test_compare_impl_rejects_too_many_runs(logdir):
    with pytest.raises(errors.InvalidArgumentError, match="at most 50 runs"):
        compare_impl(open_logdir(logdir), "block1_bn", [f"run{i}" for i in range(51)], 10)


@pytest.fixture(scope="module")
def scale_logdir(tmp_path_factory):
    """Run ``unwired``: a graph only (seed 004's, update ops not wired, two sites); run
    ``mirrored``: a MirroredStrategy ``fit`` with per-replica statistics (``_mirrored_run.py``).
    """
    from _bn_graphs import two_seed004_layers
    from _scale_logdir import write_mirrored_run

    from tb_bn_plugin.summary import write_graph

    root = str(tmp_path_factory.mktemp("scale"))
    write_graph(two_seed004_layers(wire_updates=False), os.path.join(root, "unwired"))
    write_mirrored_run(root)
    return root


@pytest.mark.parametrize("loader", ["python", "rust"])
def test_graph_findings_reach_overview_and_diagnostics(scale_logdir, loader):
    tb = App(scale_logdir, loader)
    try:
        overview = {r["run"]: r for r in tb.get("runs")["runs"]}
        diagnosed = tb.get("diagnostics")["diagnostics"]
        only = tb.get("diagnostics", run="unwired")["diagnostics"]
        graph = tb.get("graph", run="unwired")
        mirrored_graph = tb.get("graph", run="mirrored")
    finally:
        tb.close()
    unwired = overview["unwired"]
    assert unwired["has_graph"] and unwired["layers"] == []
    expected = [
        {key: f[key] for key in ("code", "severity", "title", "sites", "site_layers")}
        for f in graph["findings"]
    ]
    assert unwired["graph_findings"] == expected
    assert {f["code"] for f in expected} == {"update-ops-not-wired"}
    assert expected[0]["sites"] == ["a/bn", "b/bn"]
    assert expected[0]["site_layers"] == {}  # a graph-only run logs no layers
    assert [site["layer"] for site in graph["sites"]] == [None, None]
    # The callback's own graph of the mirrored fit. tf.distribute assigns each moving variable once
    # per device, under update_<device> scopes: those are the layer's updates (4: 2 variables x 2
    # devices), wired, momentum 0.8 (_mirrored_run.py), so no `no-update-ops` (was a false info).
    (site,) = mirrored_graph["sites"]
    assert site["name"].endswith("bn_1") and len(site["update_ops"]) == 4
    assert site["layer"] == "bn"  # the op scope `..._1/bn_1` is the logged layer `bn`
    assert all("/update_" in op for op in site["update_ops"])
    assert site["updates_wired"] is True and site["momentum"] == pytest.approx(0.8)
    assert mirrored_graph["findings"] == [] and site["findings"] == []
    assert overview["mirrored"]["graph_findings"] == []
    from_graph = [f for f in diagnosed if f["run"] == "unwired"]
    assert [f for f in diagnosed if f["run"] == "mirrored" and "sites" in f] == [
        {"run": "mirrored", **f} for f in mirrored_graph["findings"]
    ]
    assert from_graph == only == [{"run": "unwired", **f} for f in graph["findings"]]


@pytest.mark.parametrize("loader", ["python", "rust"])
def test_layer_route_per_replica_statistics(scale_logdir, loader):
    tb = App(scale_logdir, loader)
    try:
        body = tb.get("layer", run="mirrored", layer="bn")
    finally:
        tb.close()
    series = load_runs(open_logdir(scale_logdir), runs=["mirrored"])["mirrored"]
    replicas = series.layers["bn"].replicas
    answer = body["replicas"]
    assert answer["steps"] == replicas.steps.tolist() and len(answer["steps"]) == 4
    assert np.array_equal(answer["count"], replicas.count.T)
    np.testing.assert_allclose(answer["batch_mean"], replicas.mean.mean(axis=2).T, rtol=RTOL)
    np.testing.assert_allclose(
        answer["batch_variance"], replicas.variance.mean(axis=2).T, rtol=RTOL
    )
    combined = replicas.global_moments()
    np.testing.assert_allclose(
        answer["global"]["batch_mean"], combined.mean.mean(axis=1), rtol=RTOL, atol=1e-7
    )
    finding = answer["finding"]
    assert finding["code"] == "replica-batch-too-small" and finding["layers"] == ["bn"]
    assert finding["evidence"]["replicas"] == 2 and finding["evidence"]["per_replica_count"] == 8


def test_graph_route_marks_both_paths(app):
    body = app.get("graph", run="train")
    assert body["error"] is None and len(body["sites"]) >= len(LAYERS)
    for site in body["sites"]:
        assert site["kind"] in ("switch_merge", "functional_if", "separate_functions", "unswitched")
        assert all(
            isinstance(op, str)
            for op in site["training_path"] + site["inference_path"] + site["update_ops"]
        )
    trained = [s for s in body["sites"] if s["training_path"] and s["inference_path"]]
    assert trained
    for finding in body["findings"]:
        assert isinstance(finding["evidence"], dict) and isinstance(finding["sites"], list)
    assert app.get("graph", run=HOSTILE)["sites"] == body["sites"]
    # A run without a graph is a 404 like every other missing data, saying how to write one.
    missing = app.get("graph", 404, run="truncated")
    assert missing == {
        "error": "run 'truncated' has no graph; write one with tb_bn_plugin.write_graph "
        "or tf.summary.graph"
    }


@pytest.fixture(scope="module")
def bad_graph_logdir(tmp_path_factory):
    """A run whose stored graph is not a GraphDef (TensorBoard's event writer), with one layer."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    from tb_bn_plugin.summary import SummaryWriter

    root = str(tmp_path_factory.mktemp("bad_graph"))
    writer = EventFileWriter(os.path.join(root, "broken"))
    writer.add_event(event_pb2.Event(step=0, wall_time=1.0, graph_def=b"\xff\xff\xff"))
    writer.close()
    config = LayerConfig("bn", 0, 2, -1, 0.99, 1e-3, True, True)
    info = {"training": 1.0, "trainable": 1.0, "count": 8.0, "momentum": 0.99, "full": 0.0}
    layer_writer = SummaryWriter(os.path.join(root, "broken"))
    values = {stat: np.ones(2) for stat in config.stats()}
    (summary,) = records.summary_records([config], [values], [info])
    layer_writer.write(
        metadata.layer_tag("bn", metadata.SUFFIX_SUMMARY),
        summary,
        1,
        records.layer_summary_content(config),
    )
    layer_writer.close()
    return root


@pytest.mark.parametrize("loader", ["python", "rust"])
def test_graph_route_unreadable_graph_is_404(bad_graph_logdir, loader):
    tb = App(bad_graph_logdir, loader)
    try:
        (run,) = tb.get("runs")["runs"]
        assert run["run"] == "broken" and run["has_graph"]
        body = tb.get("graph", 404, run="broken")
        layer = tb.get("layer", run="broken", layer="bn")
    finally:
        tb.close()
    assert body["error"].startswith("run 'broken': stored graph is not a GraphDef: ")
    assert layer["graph_sites"] == []  # the layer is still served, without a site


# -- pure functions and caching -------------------------------------------------


def test_impl_functions_without_http(logdir, stats):
    source = open_logdir(logdir)
    body = layer_impl(source, "train", "head_bn", resolution=3, channel=0)
    assert body["steps"] == [2, 18, 32]  # indices round(linspace(0, 15, 3)) = 0, 8, 15
    np.testing.assert_allclose(
        body["channel"]["values"]["gamma"],
        stats["train"]["head_bn"]["gamma"][1][[0, 8, 15], 0],
        rtol=RTOL,
    )
    with pytest.raises(errors.InvalidArgumentError):
        layer_impl(source, "train", "head_bn", channel=4)
    with pytest.raises(errors.NotFoundError, match="unknown run 'nope'"):
        graph_impl(source, "nope")
    with pytest.raises(errors.NotFoundError, match="has no graph"):
        graph_impl(source, "truncated")
    with pytest.raises(errors.InvalidArgumentError):
        params.int_param({"resolution": "0x10"}, "resolution", 5, 2)


def test_cache_never_serves_data_a_reload_replaced(logdir, tmp_path):
    """A growing events file: after the reload, the overview and the layer route show new steps."""
    (events,) = os.listdir(os.path.join(logdir, HOSTILE))
    with open(os.path.join(logdir, HOSTILE, events), "rb") as f:
        content = f.read()
    records = tfrecords(content)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / events).write_bytes(b"".join(records[: len(records) // 2]))
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        tensor_size_guidance={metadata.PLUGIN_NAME: 0}
    )
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    source = ExperimentSource(
        MultiplexerProvider(multiplexer, str(tmp_path)), context.RequestContext(), ""
    )
    cache = SeriesCache()

    def block1():
        (run,) = runs.runs_impl(source, cache)["runs"]
        return run["layers"][0]

    before = block1()
    assert block1() == before  # a cache hit
    (run_dir / events).write_bytes(content)
    multiplexer.Reload()
    after = block1()
    assert after["num_steps"] == len(LOGGED_STEPS) > before["num_steps"]
    layer = layer_impl(source, "run", "block1_bn", cache=cache)
    assert layer["steps"] == LOGGED_STEPS


def _floats(values):
    return np.array(values, dtype=np.float64)


# -- background warming ---------------------------------------------------------


def _count_diagnosed(monkeypatch) -> list[str]:
    """The runs ``diagnostics.diagnose`` is called with from now on (the overview's findings)."""
    diagnosed: list[str] = []
    real = runs.diagnostics.diagnose

    def counting(run, *args):
        diagnosed.append(run.run)
        return real(run, *args)

    monkeypatch.setattr(runs.diagnostics, "diagnose", counting)
    return diagnosed


def test_tensorboard_warms_the_overview_in_the_background(logdir, monkeypatch):
    """The plugin computes each run's overview once before the tab asks; the tab's request
    is then answered from the cache, with the same body as a cold one."""
    diagnosed = _count_diagnosed(monkeypatch)
    monkeypatch.setattr(loader, "SETTLING_WARM_S", 0.05)
    expected = {name for name, _ in runs.overview_runs(open_logdir(logdir), None)}
    app = App(logdir, "python", "--bn_internals_warm_interval", "0.05")
    deadline = time.time() + 60
    while set(diagnosed) != expected and time.time() < deadline:
        time.sleep(0.05)
    assert set(diagnosed) == expected
    time.sleep(0.3)  # several more rounds: nothing changed, nothing is computed again
    body = app.get("runs")
    assert sorted(diagnosed) == sorted(expected)
    cold = App(logdir, "python", "--bn_internals_warm_interval", "0").get("runs")
    assert body == cold


def test_warming_follows_data_that_arrives_after_start(logdir, tmp_path, monkeypatch):
    """TensorBoard often finishes loading a large logdir long after it starts: the plugin
    warms again soon while the overview lists no run or keeps changing, and only then at
    the (here hour-long) interval, so the tab opened after the load still finds it warm."""
    diagnosed = _count_diagnosed(monkeypatch)
    monkeypatch.setattr(loader, "SETTLING_WARM_S", 0.05)
    late = tmp_path / "late"
    late.mkdir()
    before = set(threading.enumerate())
    app = App(str(late), "python", "--bn_internals_warm_interval", "3600")
    [warmer] = [
        t for t in threading.enumerate() if t not in before and t.name == "bn_internals_warm"
    ]
    time.sleep(0.5)  # several warm-ups of an empty overview: none settles the cadence
    shutil.copytree(os.path.join(logdir, "train"), late / "train")
    app.multiplexer.AddRunsFromDirectory(str(late))  # what TensorBoard's reload thread does
    app.multiplexer.Reload()
    deadline = time.time() + 60
    while "train" not in diagnosed and time.time() < deadline:
        time.sleep(0.05)
    assert diagnosed == ["train"]
    # The warming thread ends with its plugin, even in the middle of an hour-long wait. A
    # warm-up still running holds the plugin; the collection after it ends frees it.
    del app
    deadline = time.time() + 10
    while warmer.is_alive() and time.time() < deadline:
        gc.collect()
        warmer.join(0.1)
    assert not warmer.is_alive()


def test_no_warming_when_turned_off(logdir, monkeypatch):
    diagnosed = _count_diagnosed(monkeypatch)
    monkeypatch.setattr(loader, "SETTLING_WARM_S", 0.05)
    App(logdir, "python", "--bn_internals_warm_interval", "0")
    time.sleep(0.3)
    assert diagnosed == []
