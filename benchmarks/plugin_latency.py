"""Latency of the BN Internals plugin on a large synthetic logdir.

Synthesises runs of BatchNormalization layers x logged steps (one run written
with ``tb_bn_plugin.summary.SummaryWriter`` and ``records`` straight from
numpy data, no training; 8 channels per layer, per-channel snapshots at the
cadence the callback's default byte budget picks; the other runs are copies of
its event file, read like any run), then, for each TensorBoard loader
(Python ``EventMultiplexer``; Rust data server when installed) measures:

* load: ``LocalDataIngester`` (``EventMultiplexer.Reload``), or the data
  server from start until every series is loaded; plus a real
  ``tensorboard --load_fast=true`` process from launch until the ``runs``
  route lists every layer of every run with every step; then, in a fresh such
  process (no request before), the tab's first meaningful paint in headless Chromium
  (``/usr/bin/chromium`` via playwright; skipped without them): from opening
  ``#bn_internals`` until the overview lists every layer and draws the
  sparklines in view;
* the ``runs`` (overview) route, one layer's ``layer`` route and a
  ``COMPARE_RUNS``-run ``compare`` route (``resolution=1000``) through
  TensorBoard's real WSGI app: *cold* is the first request of a fresh plugin
  (empty cache, background warming off; median over fresh plugins / different
  layers, wall time and CPU time of this process and of the data server),
  *warm* the median of repeated requests;
* the memory each loader holds once loaded (this process's RSS growth for the
  Python loader, the data server's RSS for the Rust one).

The Python loader reads a logdir of the same runs and layers with at most
``PYTHON_LOADER_STEPS`` logged steps unless told otherwise (``--python-loader-steps``:
it keeps every event as a parsed proto, about 1.5 KB each, so the full size
holds about 11 GB). The first paint runs with the plugin's
default background warming (``--bn_internals_warm_interval``), as a user meets it.

Targets (full size): overview and a 4-run compare < 1 s, one layer's detail < 200 ms,
first paint < 2 s. Prints a table and writes ``benchmarks/results/plugin_latency.json``.

    python benchmarks/plugin_latency.py            # 10 runs x 100 layers x 5,000 steps
    python benchmarks/plugin_latency.py --quick    # 10 runs x 20 layers x 1,000 steps
    python benchmarks/plugin_latency.py --smoke    # 2 runs x 4 layers x 100 steps
    python benchmarks/plugin_latency.py --logdir /tmp/bn_latency  # keep the logdirs, reuse them
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, Optional
from urllib.parse import urlencode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.quiet_tensorflow()

import numpy as np  # noqa: E402
from tensorboard import program  # noqa: E402
from tensorboard.backend import application  # noqa: E402
from tensorboard.backend.event_processing import data_ingester  # noqa: E402
from tensorboard.data import server_ingester  # noqa: E402
from tensorboard.plugins.core import core_plugin  # noqa: E402
from werkzeug.test import Client  # noqa: E402

from tb_bn_plugin import metadata, records  # noqa: E402
from tb_bn_plugin.plugin import loader  # noqa: E402
from tb_bn_plugin.series import LayerConfig  # noqa: E402

LOG_EVERY = 50
SIZES = {
    "full": (10, 100, 5000),
    "quick": (10, 20, 1000),
    "smoke": (2, 4, 100),
}  # runs, layers, steps
COMPARE_RUNS = 4
# The Python loader reads a logdir of the same runs and layers with at most this many
# logged steps: TensorBoard's multiplexer keeps every event as a parsed proto (2.2-3.4 KB
# each measured, held before the plugin reads anything: 16-25 GB at the full size's 7.5 M
# events, 3.3-5 GB at 1,000 steps, the most that fits this benchmark's 6 GB budget on a
# shared 24 GB machine). Its routes read evenly spaced samples (the overview 64 per layer,
# a layer 1,000), so their cost hardly depends on the number of steps.
PYTHON_LOADER_STEPS = 1000
REPEATS = {"full": 5, "quick": 5, "smoke": 2}
PREFIX = "/data/plugin/bn_internals/"
RESOLUTION = 1000
TARGETS = {"overview_s": 1.0, "compare_s": 1.0, "layer_s": 0.2, "first_paint_s": 2.0}
CHROMIUM = "/usr/bin/chromium"
LOAD_TIMEOUT_S = 600


def layer_configs(num_layers: int, channels: int) -> list[LayerConfig]:
    return [
        LayerConfig(
            path=f"block{i // 2}/bn{i % 2}",
            index=i,
            channels=channels,
            axis=-1,
            momentum=0.99,
            epsilon=1e-3,
            center=True,
            scale=True,
            rank=4,
        )
        for i in range(num_layers)
    ]


def synthetic_stats(
    num_layers: int, num_steps: int, channels: int, momentum: float, seed: int
) -> dict[str, np.ndarray]:
    """Per-channel statistics, stat -> (steps, layers, channels): noisy batch stats, their EMA."""
    rng = np.random.default_rng(seed)
    shape = (num_steps, num_layers, channels)
    drift = np.cumsum(rng.normal(0.0, 0.01, shape), axis=0)
    batch_mean = drift + rng.normal(0.0, 0.1, shape)
    batch_variance = np.exp(0.1 * drift + rng.normal(0.0, 0.05, shape))
    moving_mean = np.empty(shape)
    moving_variance = np.empty(shape)
    mean, var = np.zeros(shape[1:]), np.ones(shape[1:])
    decay = momentum**LOG_EVERY  # the EMA after LOG_EVERY training steps of similar batches
    for t in range(num_steps):
        mean = decay * mean + (1 - decay) * batch_mean[t]
        var = decay * var + (1 - decay) * batch_variance[t]
        moving_mean[t], moving_variance[t] = mean, var
    return {
        metadata.BATCH_MEAN: batch_mean,
        metadata.BATCH_VARIANCE: batch_variance,
        metadata.MOVING_MEAN: moving_mean,
        metadata.MOVING_VARIANCE: moving_variance,
        metadata.GAMMA: 1.0 + np.cumsum(rng.normal(0.0, 1e-3, shape), axis=0),
        metadata.BETA: np.cumsum(rng.normal(0.0, 1e-3, shape), axis=0),
    }


def summary_records(
    config: LayerConfig, values: dict[str, np.ndarray], info: dict[str, np.ndarray]
) -> np.ndarray:
    """(steps, record) ``records.summary_records`` of one layer at every step at once.

    ``summarize_across_channels`` and the drift functions work on stacked rows,
    so all steps go through them in one call; spot-checked against
    ``records.summary_records`` below.
    """
    steps = len(info[metadata.INFO_FIELDS[0]])
    rows = {**values, **records.drift_rows(values, config.epsilon)}
    stats = records.summary_stats(config)
    stacked = np.stack([rows[s] for s in stats], axis=1).reshape(
        steps * len(stats), config.channels
    )
    summary = records.summarize_across_channels(stacked).reshape(steps, -1)
    head = np.stack([info[f] for f in metadata.INFO_FIELDS], axis=1)
    out = np.concatenate([head, summary], axis=1).astype(np.float32)
    for t in (0, steps - 1):
        (expected,) = records.summary_records(
            [config], [{s: v[t] for s, v in values.items()}], [{f: v[t] for f, v in info.items()}]
        )
        np.testing.assert_allclose(out[t], expected, rtol=1e-6, atol=1e-6)
    return out


def run_names(num_runs: int) -> list[str]:
    return [f"run{i:02d}" for i in range(num_runs)]


def synthesize(
    logdir: str, num_runs: int, num_layers: int, num_steps: int, channels: int = 8, seed: int = 0
) -> dict:
    """Write ``num_runs`` runs under ``logdir`` (copies of the first); returns what was written."""
    import tensorflow as tf

    from tb_bn_plugin.summary import SummaryWriter
    from tb_bn_plugin.training.session import DEFAULT_MAX_BYTES_PER_LOG

    configs = layer_configs(num_layers, channels)
    stats = synthetic_stats(num_layers, num_steps, channels, configs[0].momentum, seed)
    steps = (np.arange(num_steps, dtype=np.int64) + 1) * LOG_EVERY
    interval = records.snapshot_interval(configs, np.dtype(np.float32), DEFAULT_MAX_BYTES_PER_LOG)
    cadence = records.SnapshotCadence(
        interval
    )  # the callback's; the last (epoch-end) step forces one
    full = np.array([cadence.next(force=t == num_steps - 1) for t in range(num_steps)])
    info = {
        "training": np.ones(num_steps),
        "trainable": np.ones(num_steps),
        "count": np.full(num_steps, 32.0 * 64),
        "momentum": np.full(num_steps, configs[0].momentum),
        "full": full.astype(np.float64),
    }
    summaries = np.stack(
        [
            summary_records(c, {s: v[:, i] for s, v in stats.items()}, info)
            for i, c in enumerate(configs)
        ],
        axis=1,
    )  # (steps, layers, record)
    channel_data = np.stack([stats[s] for s in metadata.CHANNEL_STATS], axis=2).astype(
        np.float32
    )  # (S, L, R, C)

    first, *copies = run_names(num_runs)
    writer = SummaryWriter(os.path.join(logdir, first), max_queue=10_000)

    def write_steps(block_steps, block_summaries, block_channels, block_full):
        # In step order: TensorBoard purges events "orphaned" by a step that goes backwards.
        for t in tf.range(tf.shape(block_steps)[0]):
            for i, config in enumerate(configs):
                writer.write(
                    metadata.layer_tag(config.path, metadata.SUFFIX_SUMMARY),
                    block_summaries[t, i],
                    block_steps[t],
                    records.layer_summary_content(config),
                )
            if block_full[t]:
                for i, config in enumerate(configs):
                    writer.write(
                        metadata.layer_tag(config.path, metadata.SUFFIX_CHANNELS),
                        block_channels[t, i],
                        block_steps[t],
                        records.layer_channels_content(config),
                    )

    # The first step eagerly: the writer puts each tag's metadata on its first
    # event only. The rest in graph blocks (fast), without metadata.
    write_steps(steps[:1], summaries[:1], channel_data[:1], full[:1])
    write_block = tf.function(
        write_steps,
        input_signature=[
            tf.TensorSpec((None,), tf.int64),
            tf.TensorSpec((None,) + summaries.shape[1:], tf.float32),
            tf.TensorSpec((None,) + channel_data.shape[1:], tf.float32),
            tf.TensorSpec((None,), tf.bool),
        ],
    )
    block = 500
    for start in range(1, num_steps, block):
        end = min(start + block, num_steps)
        write_block(
            steps[start:end], summaries[start:end], channel_data[start:end], full[start:end]
        )
    writer.close()
    for name in copies:
        shutil.copytree(os.path.join(logdir, first), os.path.join(logdir, name))
    return {
        "runs": num_runs,
        "layers": num_layers,
        "steps": num_steps,
        "channels": channels,
        "snapshot_interval": interval,
        "snapshots": int(full.sum()),
        "bytes": _dir_bytes(logdir),
    }


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def tensorboard_flags(logdir: str):
    """Flags and loaders as ``tensorboard --logdir logdir`` makes them (``fix_flags`` included)."""
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
            # Cold means cold: no background overview in the measured plugins.
            "--bn_internals_warm_interval",
            "0",
        ]
    )
    return tb.flags, tb.plugin_loaders


def start_loader(logdir: str, loader: str, expected: dict[tuple[str, str], int]):
    """(provider, multiplexer, stop) once every BN Internals series is loaded."""
    flags, _ = tensorboard_flags(logdir)
    if loader == "python":
        ingester = data_ingester.LocalDataIngester(flags)
        ingester.start()  # blocking reload
        return ingester.data_provider, ingester.deprecated_multiplexer, lambda: None
    ingester = server_ingester.SubprocessServerDataIngester(
        server_binary=server_ingester.get_server_binary(),
        logdir=flags.logdir,
        reload_interval=flags.reload_interval,
        channel_creds_type=flags.grpc_creds_type,
        samples_per_plugin=flags.samples_per_plugin,
    )
    ingester.start()
    stop = ingester._stdin_handle.close  # the data server runs with --die-after-stdin
    deadline = time.perf_counter() + LOAD_TIMEOUT_S
    while time.perf_counter() < deadline:
        listing = ingester.data_provider.list_tensors(
            None, experiment_id="", plugin_name=metadata.PLUGIN_NAME
        )
        loaded = {
            (run, tag): series.max_step
            for run, tags in listing.items()
            for tag, series in tags.items()
        }
        if loaded == expected:
            return ingester.data_provider, None, stop
        time.sleep(0.05)
    stop()
    raise TimeoutError(f"the data server did not load every series within {LOAD_TIMEOUT_S} s")


def route_latency(logdir: str, provider, multiplexer, info: dict, repeats: int) -> dict[str, Any]:
    """Cold and warm latency of the runs route, one layer's layer route and a compare route."""
    flags, loaders = tensorboard_flags(logdir)

    def fresh_client() -> Client:
        return Client(application.TensorBoardWSGIApp(flags, loaders, provider, None, multiplexer))

    def get(client: Client, route: str) -> dict:
        # As a browser asks: TensorBoard then gzips the JSON, part of the latency.
        response = client.get(PREFIX + route, headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        return json.loads(gzip.decompress(response.get_data()))

    layer_paths = [c.path for c in layer_configs(info["layers"], info["channels"])]

    names = run_names(info["runs"])
    compared = names[:COMPARE_RUNS]

    def layer_route(path: str) -> str:
        return f"layer?run={names[0]}&layer={path}&resolution={RESOLUTION}"

    def compare_route(path: str) -> str:
        query = {"layer": path, "run": compared, "resolution": RESOLUTION}
        return "compare?" + urlencode(query, doseq=True)

    cold: dict[str, list[float]] = {}

    def timed_cold(name: str, request: Callable[[], dict]) -> dict:
        """The request's wall time, this process's CPU time and the data server's (Rust)."""
        server_cpu = _children_cpu_s()
        wall, cpu, body = harness.time_call(request)
        cold.setdefault(f"{name}_cold_samples_s", []).append(wall)
        cold.setdefault(f"{name}_cold_cpu_samples_s", []).append(cpu)
        cold.setdefault(f"{name}_cold_server_cpu_samples_s", []).append(
            _children_cpu_s() - server_cpu
        )
        return body

    for i in range(repeats):
        # A compare is the first request of its fresh plugin, as when the tab opens on it.
        path = layer_paths[(i * 7 + 3) % len(layer_paths)]
        client = fresh_client()
        body = timed_cold(
            "compare", lambda client=client, path=path: get(client, compare_route(path))
        )
        assert [r["run"] for r in body["runs"]] == compared
        assert all(len(r["steps"]) == min(info["steps"], RESOLUTION) for r in body["runs"])
        client = fresh_client()
        body = timed_cold("overview", lambda client=client: get(client, "runs"))
        assert [run["run"] for run in body["runs"]] == names
        for run in body["runs"]:
            assert len(run["layers"]) == info["layers"]
            assert {layer["num_steps"] for layer in run["layers"]} == {info["steps"]}, (
                "overview lost steps"
            )
        path = layer_paths[(i * 7) % len(layer_paths)]
        detail = timed_cold(
            "layer", lambda client=client, path=path: get(client, layer_route(path))
        )
        assert (
            len(detail["steps"]) == min(info["steps"], RESOLUTION)
            and detail["steps"][-1] == info["last_step"]
        )
    client = fresh_client()
    get(client, "runs")
    get(client, layer_route(layer_paths[0]))
    get(client, compare_route(layer_paths[0]))
    return {
        **{
            f"{name}_cold{kind}_s": harness.median(cold[f"{name}_cold{kind}_samples_s"])
            for name in ("overview", "layer", "compare")
            for kind in ("", "_cpu", "_server_cpu")
        },
        "overview_warm": harness.repeat_median(lambda: get(client, "runs"), repeats),
        "layer_warm": harness.repeat_median(
            lambda: get(client, layer_route(layer_paths[0])), repeats
        ),
        "compare_warm": harness.repeat_median(
            lambda: get(client, compare_route(layer_paths[0])), repeats
        ),
        **cold,
    }


@contextlib.contextmanager
def tensorboard_process(logdir: str) -> Iterator[Optional[str]]:
    """A ``tensorboard --load_fast=true`` process on 127.0.0.1; yields its URL.

    None when the process never printed one.
    """
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            logdir,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--load_fast=true",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        url = None
        for line in proc.stderr:
            match = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if match:
                url = match.group(0)
                break
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tensorboard_process_load(
    logdir: str, info: dict, timeout_s: float = LOAD_TIMEOUT_S
) -> Optional[float]:
    """Seconds from launching ``tensorboard --load_fast=true`` until ``runs`` shows everything."""
    started = time.perf_counter()
    with tensorboard_process(logdir) as url:
        while url is not None and time.perf_counter() - started < timeout_s:
            with urllib.request.urlopen(
                url + PREFIX.lstrip("/") + "runs", timeout=timeout_s
            ) as response:
                runs = json.loads(response.read())["runs"]
            if len(runs) == info["runs"] and all(
                len(run["layers"]) == info["layers"]
                and all(layer["num_steps"] == info["steps"] for layer in run["layers"])
                for run in runs
            ):
                return time.perf_counter() - started
            time.sleep(0.2)
    return None


def first_paint(logdir: str, info: dict, load_s: float) -> Optional[dict[str, float]]:
    """The tab's first meaningful paint in headless Chromium over a real ``tensorboard``.

    A fresh process is given twice the measured load time (no request asks the
    plugin meanwhile; its background warming runs, as for a user who opens the
    tab after TensorBoard has loaded); then the clock runs from
    opening ``#bn_internals`` until the overview lists every layer and draws
    the sparklines in view. None without ``/usr/bin/chromium`` or the
    playwright package.
    """
    if not os.path.exists(CHROMIUM):
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with tensorboard_process(logdir) as url, sync_playwright() as playwright:
        if url is None:
            return None
        time.sleep(2 * load_s)
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            started = time.perf_counter()
            page.goto(url + "#bn_internals")
            frame = None
            while frame is None and time.perf_counter() - started < LOAD_TIMEOUT_S:
                frame = next(
                    (f for f in page.frames if "plugin_entry.html?name=bn_internals" in f.url), None
                )
                page.wait_for_timeout(20)
            # Every layer's row, and the sparklines in view drawn (drawn as rows scroll in).
            frame.wait_for_function(
                "n => document.querySelectorAll('[data-view=overview] tr[data-layer]').length === n"
                " && document.querySelector("
                "'[data-view=overview] tr[data-layer] .sparkline canvas') !== null",
                arg=info["runs"] * info["layers"],
                timeout=LOAD_TIMEOUT_S * 1000,
            )
            paint_s = time.perf_counter() - started
            # performance.now() in the plugin's frame when the overview first rendered.
            frame_ms = float(frame.evaluate("document.documentElement.dataset.firstRenderMs"))
        finally:
            browser.close()
    return {"first_paint_s": paint_s, "plugin_frame_first_render_s": frame_ms / 1e3}


def tensorboard_measurements(logdir: str, info: dict) -> dict[str, Any]:
    """A real ``tensorboard`` process's load time and the tab's first paint in it."""
    process_load = tensorboard_process_load(logdir, info)
    measured: dict[str, Any] = {"tensorboard_process_load_s": process_load}
    if process_load is not None:
        try:
            measured["browser"] = first_paint(logdir, info, process_load)
        except Exception as err:  # noqa: BLE001 - keep the route numbers measured so far
            # Chromium can fail to start on a loaded machine; the route numbers stand.
            measured["browser"] = None
            measured["browser_error"] = f"{type(err).__name__}: {err}"[:500]
    return measured


def loaders() -> list[str]:
    try:
        server_ingester.get_server_binary()
        return ["python", "rust"]
    except server_ingester.NoDataServerError:
        return ["python"]


def _proc_status(pid: str) -> dict[str, str]:
    """``/proc/<pid>/status`` as name -> value; empty for a process that is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}
    except OSError:
        return {}


def _rss_bytes(status: dict[str, str]) -> int:
    return int(status.get("VmRSS", "0 kB").split()[0]) * 1024


def _own_rss_bytes() -> int:
    return _rss_bytes(_proc_status("self"))


def _children_rss_bytes() -> int:
    """Resident memory of this process's children now (the Rust data server)."""
    statuses = (_proc_status(pid) for pid in filter(str.isdigit, os.listdir("/proc")))
    return sum(_rss_bytes(s) for s in statuses if s.get("PPid") == str(os.getpid()))


def _children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's children (the data server)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                # Fields after the parenthesised name: state ppid ... utime(12) stime(13).
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def add_arguments(parser) -> None:
    parser.add_argument(
        "--no-tensorboard",
        action="store_true",
        help="skip the real tensorboard process (its load time and the first paint): on a "
        "busy machine its load, and the wait of twice that before the paint, take longer "
        "than everything else",
    )
    parser.add_argument(
        "--python-loader-steps",
        type=int,
        default=PYTHON_LOADER_STEPS,
        help="logged steps of the Python loader's logdir (default %(default)s; TensorBoard's "
        "Python loader holds about 1.5 KB per event: the full size, 5000, needs about 11 GB)",
    )
    parser.add_argument(
        "--logdir",
        default=None,
        help="synthesise the logdirs under this folder once and reuse them on later runs "
        "(kept; default: a temporary folder, removed at the end)",
    )


def synthesized_logdir(logdir: str, num_runs: int, num_layers: int, num_steps: int) -> dict:
    """What ``synthesize`` wrote to ``logdir`` (reused when it wrote this size there before)."""
    marker = os.path.join(logdir, "synthesized.json")
    if os.path.exists(marker):
        with open(marker) as f:
            info = json.load(f)
        if (info["runs"], info["layers"], info["steps"]) == (num_runs, num_layers, num_steps):
            print(f"reusing {logdir}", flush=True)
            return info
        raise SystemExit(f"{logdir} holds another size; remove it or pick another --logdir")
    if os.path.exists(logdir) and os.listdir(logdir):
        raise SystemExit(f"{logdir} is not empty and was not written by this benchmark")
    print(
        f"synthesising {num_runs} runs x {num_layers} layers x {num_steps} logged steps ...",
        flush=True,
    )
    wall, _, info = harness.time_call(lambda: synthesize(logdir, num_runs, num_layers, num_steps))
    info.update(write_s=wall, last_step=num_steps * LOG_EVERY)
    print(f"  {info['bytes'] / 1e6:.1f} MB in {wall:.1f} s", flush=True)
    with open(marker, "w") as f:
        json.dump(info, f)
    return info


def main(argv=None) -> int:
    args = harness.parse_args("plugin_latency", __doc__.splitlines()[0], argv, add_arguments)
    started = time.perf_counter()
    num_runs, num_layers, num_steps = SIZES[args.mode]
    repeats = REPEATS[args.mode]
    root = args.logdir or tempfile.mkdtemp(prefix="bn_plugin_latency_")
    python_steps = min(num_steps, args.python_loader_steps)
    try:
        logdirs, infos = {}, {}
        for steps in sorted({num_steps, python_steps}, reverse=True):
            logdirs[steps] = os.path.join(root, f"steps{steps}")
            infos[steps] = synthesized_logdir(logdirs[steps], num_runs, num_layers, steps)
        info = infos[num_steps]
        results: dict[str, Any] = {}
        # The Python loader last: the memory it held stays with this process (not given back
        # to the system), beside the data servers of the Rust measurements otherwise.
        for loader in sorted(loaders(), key=lambda name: name == "python"):
            steps = python_steps if loader == "python" else num_steps
            logdir, loader_info = logdirs[steps], infos[steps]
            expected = {
                (run, metadata.layer_tag(c.path, kind)): loader_info["last_step"]
                for run in run_names(num_runs)
                for c in layer_configs(num_layers, loader_info["channels"])
                for kind in ("summary", "channels")
            }
            print(f"{loader} loader ({steps} logged steps) ...", flush=True)
            rss_before = _own_rss_bytes()
            load_s, _, (provider, multiplexer, stop) = harness.time_call(
                lambda: start_loader(logdir, loader, expected)  # noqa: B023 - called here
            )
            # The Python loader holds the data in this process, the Rust one in its server.
            held = _own_rss_bytes() - rss_before if loader == "python" else _children_rss_bytes()
            events = num_runs * num_layers * (steps + loader_info["snapshots"])
            try:
                results[loader] = {
                    "steps": steps,
                    "load_s": load_s,
                    "loaded_rss_bytes": held,
                    # Held by the loader before the plugin answers any request.
                    "loaded_events": events,
                    "loaded_bytes_per_event": held / events,
                    **route_latency(logdir, provider, multiplexer, loader_info, repeats),
                }
            finally:
                stop()
                del provider, multiplexer
            if loader == "rust" and not args.no_tensorboard:
                results["rust"].update(tensorboard_measurements(logdirs[num_steps], info))
    finally:
        if args.logdir is None:
            shutil.rmtree(root, ignore_errors=True)

    rows = [
        [
            loader,
            r["steps"],
            r["loaded_rss_bytes"] / 1e9,
            r["load_s"],
            r["overview_cold_s"],
            r["overview_cold_cpu_s"] + r["overview_cold_server_cpu_s"],
            r["overview_warm"]["median_wall_s"],
            r["layer_cold_s"],
            r["layer_warm"]["median_wall_s"],
            r["compare_cold_s"],
            r["compare_warm"]["median_wall_s"],
        ]
        for loader, r in results.items()
    ]
    print(
        f"\n{num_runs} runs x {num_layers} layers x {num_steps} logged steps, "
        f"{info['bytes'] / 1e6:.0f} MB; "
        f"seconds, medians of {repeats}"
    )
    print(
        harness.format_table(
            [
                "loader",
                "logged steps",
                "GB held",
                "load",
                "overview cold",
                "its CPU (+server)",
                "overview warm",
                "layer cold",
                "layer warm",
                f"{COMPARE_RUNS}-run compare cold",
                "compare warm",
            ],
            rows,
        )
    )
    if "tensorboard_process_load_s" in results.get("rust", {}):
        print(
            "tensorboard --load_fast=true until runs lists every step: "
            f"{results['rust']['tensorboard_process_load_s']} s"
        )
        browser = results["rust"].get("browser")
        print(
            "tab's first meaningful paint (headless Chromium, default background warming): "
            + (
                "skipped (no /usr/bin/chromium or playwright)"
                if browser is None
                else f"{browser['plugin_frame_first_render_s']:.2f} s from the tab's frame opening "
                f"(target {TARGETS['first_paint_s']} s), {browser['first_paint_s']:.2f} s from "
                "loading TensorBoard's page"
            )
        )
    harness.write_json(
        args,
        {
            "params": {
                **info,
                "resolution": RESOLUTION,
                "repeats": repeats,
                "compare_runs": COMPARE_RUNS,
            },
            "targets": TARGETS,
            "loaders": results,
        },
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
