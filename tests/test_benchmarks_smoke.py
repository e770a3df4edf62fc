"""The benchmark scripts run (``--smoke``) and write JSON with the expected keys; no numbers."""

from __future__ import annotations

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
}


def _run(name: str, out: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", f"{name}.py"), "--smoke", "--out", out],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_smoke(name, tmp_path):
    out = str(tmp_path / f"{name}.json")
    data = _run(name, out)
    assert data["benchmark"] == name
    assert data["mode"] == "smoke"
    assert MACHINE_KEYS <= set(data["machine"])
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
