"""The benchmark scripts run (``--smoke``) and write JSON with the expected keys; no numbers."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MACHINE_KEYS = {
    "cpu_model",
    "cpu_count",
    "tensorflow_version",
    "keras_version",
    "tensorboard_version",
    "date_utc",
    "page_touch_us_after_idle",
}

EXPECTED = {
    "training_overhead": {
        "params",
        "targets",
        "configs",
        "callback_signature_defaults",
        "components",
    },
    "mirrored_overhead": {"params", "targets", "configs", "callback_signature_defaults"},
    "fit_overhead": {
        "params",
        "targets",
        "verdict",
        "configurations",
        "components_extra_cpu_s",
        "first_fit",
        "retrace_warnings",
    },
    "log_cost": {"params", "models", "fits"},
    "storage": {"model", "channels", "scenarios", "target_bytes_per_logged_step"},
    "plugin_latency": {"params", "targets", "loaders"},
    "custom_loop_overhead": {"params", "configs"},
    "backend_overhead": {"params", "target", "backends"},
}


def _run(name: str, out: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", f"{name}.py"), "--smoke", "--out", out],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, str]]:
    """Every benchmark's smoke run, two at a time: each is mostly one busy Python thread
    (tracing, hooks), so on a 2-core CI machine two side by side take about the time of the
    longer one (they assert no numbers)."""
    out_dir = tmp_path_factory.mktemp("benchmark_smoke")
    # The longest first (plugin_latency, fit_overhead: 2.5-3 minutes each) so the pair ends
    # together.
    order = ["plugin_latency", "fit_overhead"] + [
        name for name in EXPECTED if name not in ("plugin_latency", "fit_overhead")
    ]
    outs = {name: str(out_dir / f"{name}.json") for name in order}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = {name: pool.submit(_run, name, out) for name, out in outs.items()}
        return {name: (run.result(), outs[name]) for name, run in runs.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_smoke(name, smoke_runs):
    proc, out = smoke_runs[name]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        data = json.load(f)
    assert data["benchmark"] == name
    assert data["mode"] == "smoke"
    assert MACHINE_KEYS <= set(data["machine"])
    assert all(us > 0 for us in data["machine"]["page_touch_us_after_idle"].values())
    assert EXPECTED[name] <= set(data)
    if name in ("training_overhead", "mirrored_overhead"):
        expected = {"bare", "bn_default"} | (
            {"bn_every_step", "tensorboard_hist"} if name == "training_overhead" else set()
        )
        assert set(data["configs"]) == expected
        for cfg in data["configs"].values():
            assert {
                "steps_per_s",
                "wall_ratio",
                "cpu_ratio",
                "median_wall_s",
                "median_cpu_s",
            } <= set(cfg)
            assert "median" in cfg["wall_ratio"] and "median" in cfg["cpu_ratio"]
        if name == "training_overhead":
            components = data["components"]
            assert "median" in components["step_capture"]["cpu_ratio"]
            assert set(components["composed"]) == {"bn_default", "bn_every_step"}
            for composed in components["composed"].values():
                assert {"epoch_work_cpu_s", "ratio_at_4_steps", "ratio_at_782_steps"} <= set(
                    composed
                )
    elif name == "custom_loop_overhead":
        assert set(data["configs"]) == {"bare", "logger_jax_jit", "logger_jit"}
        for cfg in data["configs"].values():
            assert {"median_wall_s", "median_cpu_s", "median_epoch_cpu_s"} <= set(cfg)
            assert "median" in cfg["cpu_ratio"] and "median" in cfg["epoch_cpu_ratio"]
    elif name == "backend_overhead":
        assert set(data["backends"]) == {"tensorflow", "jax", "torch"}
        for result in data["backends"].values():
            assert "error" not in result, result.get("error")
            assert {
                "cpu_ratio",
                "wall_ratio",
                "epoch_cpu_ratios",
                "window_cpu_ratio_median",
                "whole_fit_cpu_ratio",
                "hooks_cpu_per_epoch_s",
            } <= set(result)
            # Epoch 0 is one window per fit, then the timed epochs' windows, the same steps in
            # both fits.
            windows = {
                n: [(s["epoch"], s["window"]) for s in rows]
                for n, rows in result["samples"].items()
            }
            assert windows["bare"] == windows["bn_default"]
            assert windows["bare"][0] == (0, 0) and len(windows["bare"]) > 1
    elif name == "log_cost":
        assert data["models"]
        for model in data["models"]:
            assert {"bn_layers", "channels", "log_full", "snapshot", "records", "write"} <= set(
                model
            )
        assert {"slope_us_per_channel", "intercept_us", "r2"} <= set(
            data["fits"]["log_full"]["vs_channels"]
        )
    elif name == "plugin_latency":
        assert "python" in data["loaders"]
        for loader in data["loaders"].values():
            assert {
                "steps",
                "load_s",
                "loaded_rss_bytes",
                "overview_cold_s",
                "overview_cold_cpu_s",
                "overview_cold_server_cpu_s",
                "layer_cold_s",
                "overview_warm",
                "layer_warm",
                "compare_cold_s",
                "compare_warm",
            } <= set(loader)
    elif name == "fit_overhead":
        assert {
            "bare",
            "keras_tensorboard",
            "bn_default",
            "bare_after_bn",
            "bare_after_bare",
        } <= set(data["configurations"])
        for config in data["configurations"].values():
            assert {"cpu_ratio", "wall_ratio", "extra_cpu_s"} <= set(config)
        assert {
            "capture_s",
            "gap_probe_s",
            "run_graph_s",
            "next_plain_fit_s",
            "gap_evaluations_s",
        } == set(data["components_extra_cpu_s"])
        assert {"total", "functions"} == set(data["retrace_warnings"])
        breakdown = data["first_fit"]["breakdown"]
        assert {
            "train_step_first_call_s",
            "run_graph_s",
            "gap_probe_s",
            "snapshots_s",
            "other_callback_work_s",
            "unattributed_s",
            "total_s",
        } == set(breakdown)
        for component in breakdown.values():
            assert {"first_fit_s", "later_fit_s", "once_per_model_s"} == set(component)
    else:
        for scenario in data["scenarios"].values():
            assert {
                "slope_bytes_per_logged_step",
                "avg_bytes_per_logged_step",
                "snapshot_interval_logged_steps",
                "growth_curve",
                "r2",
            } <= set(scenario)
