"""BatchNormCallback under tf.distribute: MirroredStrategy with 2 logical CPU devices, and
MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1.

Each case runs in fresh processes (``_distribute_worker.py``, ``_multi_worker.py``):
logical devices and TF_CONFIG must be set before TensorFlow initialises.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "_distribute_worker.py")
MULTI_WORKER = os.path.join(os.path.dirname(__file__), "_multi_worker.py")


def _run(mode: str) -> dict:
    proc = subprocess.run(
        [sys.executable, WORKER, mode],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    out["x"] = np.array(out["x"], dtype=np.float64)
    return out


def _check_replicas(replicas: dict, findings: dict, x: np.ndarray) -> None:
    """2 replicas x 8 rows of 16-row batches over ``x`` (2 epochs): replica, global stats, finding.

    ``replicas``: ``ReplicaSeries`` fields plus its ``global_moments()`` as ``global_*``;
    ``findings``: code -> evidence.
    """
    batches = [x[0:16], x[16:32], x[0:16], x[16:32]]
    halves = [[b[:8], b[8:]] for b in batches]
    np.testing.assert_array_equal(replicas["count"], [[8, 8]] * 4)
    np.testing.assert_allclose(
        replicas["mean"], [[h.mean(axis=0) for h in b] for b in halves], rtol=1e-5
    )
    np.testing.assert_allclose(
        replicas["variance"], [[h.var(axis=0) for h in b] for b in halves], rtol=1e-4
    )
    np.testing.assert_array_equal(replicas["global_count"], np.full((4, 3), 16.0))
    np.testing.assert_allclose(
        replicas["global_mean"], [b.mean(axis=0) for b in batches], rtol=1e-5
    )
    np.testing.assert_allclose(
        replicas["global_variance"], [b.var(axis=0) for b in batches], rtol=1e-4
    )
    # 8 values per replica: the diagnostic fires, with the halves' means' spread in global stds.
    evidence = findings["replica-batch-too-small"]
    assert (evidence["replicas"], evidence["per_replica_count"], evidence["global_count"]) == (
        2,
        8,
        16,
    )
    spread = [
        (np.std([h.mean(axis=0) for h in halves_], axis=0) / np.sqrt(b.var(axis=0) + 1e-3)).mean()
        for b, halves_ in zip(batches, halves)
    ]
    np.testing.assert_allclose(evidence["replica_mean_spread"], np.median(spread), rtol=1e-4)


@pytest.mark.parametrize("mode", ["unsync", "sync"])
def test_mirrored_strategy_two_replicas(mode):
    out = _run(mode)
    x = out["x"]
    assert out["identical"], "training with the callback must give the same weights as without"
    assert out["steps"] == [1, 2, 3, 4]
    batch_mean = np.array(out["batch_mean"])
    batch_variance = np.array(out["batch_variance"])
    if mode == "unsync":
        # Each replica normalises its own half of every 16-row batch; the first replica's is logged.
        shares = [x[0:8], x[16:24], x[0:8], x[16:24]]
        np.testing.assert_array_equal(out["count"], [8] * 4)
    else:
        shares = [x[0:16], x[16:32], x[0:16], x[16:32]]
        np.testing.assert_array_equal(out["count"], [16] * 4)
    np.testing.assert_allclose(batch_mean, [s.mean(axis=0) for s in shares], rtol=1e-5)
    np.testing.assert_allclose(batch_variance, [s.var(axis=0) for s in shares], rtol=1e-4)
    if mode == "sync":
        assert out["replicas"] is None  # the logged statistics are global already
        assert "replica-batch-too-small" not in out["findings"]
    else:
        replicas = out["replicas"]
        assert replicas["steps"] == [1, 2, 3, 4]
        _check_replicas(replicas, out["findings"], x)
    # The moving statistics follow exactly the logged batch statistics: Keras 3 mirrors BN's moving
    # variables with first-replica aggregation, so an unsynchronised layer's EMA ingests replica 0's
    # statistics only, the same ones the callback logs.
    moving = np.zeros(3)
    expected = []
    for row in batch_mean:
        moving = 0.8 * moving + 0.2 * row
        expected.append(moving)
    np.testing.assert_allclose(np.array(out["moving_mean"]), expected, rtol=1e-5)
    # precise_stats / recalibrate work on a model built under the strategy.
    np.testing.assert_allclose(out["precise_mean"], x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["precise_variance"], x.var(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["recalibrated_mean"], x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["recalibrated_variance"], x.var(axis=0), rtol=1e-6)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(tmp_path, mode: str, log_dir: str, n: int = 2, timeout: float = 120) -> list[dict]:
    """Run ``n`` ``_multi_worker.py MODE`` processes as a cluster; kill all on failure/timeout."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(n)]}
    procs = []
    try:
        for i in range(n):
            temp = tmp_path / f"worker{i}_tmp"
            temp.mkdir()
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                TMPDIR=str(temp),
                TF_CPP_MIN_LOG_LEVEL="2",
            )
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        MULTI_WORKER,
                        mode,
                        log_dir,
                        str(tmp_path / f"worker{i}.json"),
                    ],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"worker {i} failed:\n{log[-3000:]}"
    outs = []
    for i in range(n):
        with open(tmp_path / f"worker{i}.json") as f:
            outs.append(json.load(f))
    return outs


@pytest.mark.parametrize(
    "mode", ["fit", "loop"]
)  # BatchNormCallback in fit, BatchNormLogger in a custom loop
def test_multi_worker_chief_writes_and_training_is_unchanged(tmp_path, mode):
    from tb_bn_plugin.diagnostics import diagnose
    from tb_bn_plugin.reading.load import load_runs
    from tb_bn_plugin.reading.provider import open_logdir

    log_dir = str(tmp_path / "logs")
    chief, worker = _run_workers(tmp_path, mode, log_dir)
    assert chief["identical"] and worker["identical"], (
        "training with the callback must give the same weights"
    )
    if mode == "loop":  # the capture adds no collective to the train step
        assert chief["logged"]["collective_ops"] == chief["bare"]["collective_ops"] > 0
    # Gradients are all-reduced; an unsynchronised layer's moving statistics follow each worker's
    # own share.
    for a, b in zip(chief["trainable_weights"], worker["trainable_weights"]):
        np.testing.assert_array_equal(a, b)
    # Only the chief wrote, under log_dir; the other worker's temporary directory is gone.
    written = {
        os.path.relpath(os.path.join(d, f), log_dir)
        for d, _, files in os.walk(log_dir)
        for f in files
    }
    assert len(written) == 1 and next(iter(written)).startswith("train/events.out.tfevents.")
    assert os.listdir(tmp_path / "worker1_tmp") == []
    # The chief's replica normalises the first half of each 16-row global batch (DATA sharding).
    x = np.array(chief["x"], dtype=np.float64)
    run = load_runs(open_logdir(log_dir))["train"]
    layer = run.layers["bn"]
    np.testing.assert_array_equal(layer.steps, [1, 2, 3, 4])
    np.testing.assert_array_equal(layer.info["count"], [8] * 4)
    shares = [x[0:8], x[16:24], x[0:8], x[16:24]]
    np.testing.assert_allclose(
        layer.channels["batch_mean"], [s.mean(axis=0) for s in shares], rtol=1e-5
    )
    np.testing.assert_allclose(
        layer.channels["batch_variance"], [s.var(axis=0) for s in shares], rtol=1e-4
    )
    # Both workers' replicas, gathered by the chief's snapshots.
    np.testing.assert_array_equal(layer.replicas.steps, [1, 2, 3, 4])
    moments = layer.replicas.global_moments()
    replicas = {
        "count": layer.replicas.count,
        "mean": layer.replicas.mean,
        "variance": layer.replicas.variance,
        "global_count": moments.count,
        "global_mean": moments.mean,
        "global_variance": moments.variance,
    }
    _check_replicas(replicas, {f.code: f.evidence for f in diagnose(run)}, x)
