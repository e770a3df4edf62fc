"""BatchNormCallback on tf-keras (legacy Keras 2) models: real training, numbers against numpy.

Each case runs ``_legacy_keras_worker.py`` in a fresh process with ``TF_USE_LEGACY_KERAS=1``
(``tf.keras`` is bound to tf-keras when TensorFlow is first imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tb_bn_plugin.numerics import gap

WORKER = os.path.join(os.path.dirname(__file__), "_legacy_keras_worker.py")
MOMENTUM = 0.8
EPSILON = 1e-3  # tf-keras' default


def _run(*args: str) -> dict:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, WORKER, *args], capture_output=True, text=True, timeout=300, env=env
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_fused_path_measures_batch_moments_only_for_logged_steps():
    # 2 steps per epoch, 2 epochs, a log every 3 steps: the states after steps 2 (epoch end), 3 and
    # 4 (epoch and training end) are logged, so only step 1 skips the fused path's extra moments.
    out = _run("stats", json.dumps([{}, 3]))
    # The tf-keras adapter handles the model; the callbacks subclass tf-keras' Callback.
    assert out["flavours"] == ["TfKeras", "TfKeras"] and out["callback_base_is_tf_keras"]
    assert out["fused"] and out["due"] == [False, True, True, True]
    x = np.array(out["x"], dtype=np.float64)
    assert out["steps"] == [2, 3, 4]
    batches = [x[16:], x[:16], x[16:]]
    np.testing.assert_allclose(
        out["batch_mean"], [b.mean(axis=(0, 1, 2)) for b in batches], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        out["batch_variance"], [b.var(axis=(0, 1, 2)) for b in batches], rtol=1e-5
    )


def _virtual_moments(batch: np.ndarray, virtual_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """tf-keras' ghost batches: reshape to [virtual_batch_size, G, ...], moments per virtual
    batch, averaged."""
    groups = batch.reshape((virtual_batch_size, -1) + batch.shape[1:])
    axes = (0,) + tuple(range(2, groups.ndim - 1))
    return groups.mean(axis=axes).mean(axis=0), groups.var(axis=axes).mean(axis=0)


CASES = {
    "fused": {},
    "unfused": {"fused": False},
    "virtual": {"virtual_batch_size": 4},
    "renorm": {"renorm": True},
}


@pytest.mark.parametrize("case", list(CASES))
def test_logged_statistics_match_numpy(case):
    kwargs = CASES[case]
    out = _run("stats", json.dumps([kwargs, 1]))
    assert out["fused"] == (case == "fused")
    assert out["warnings"] == []
    x = np.array(out["x"], dtype=np.float64)
    # 32 samples, batches of 16, shuffle=False, 2 epochs: steps 1-4 see batches 0, 1, 0, 1.
    batches = [x[:16], x[16:], x[:16], x[16:]]
    assert out["steps"] == [1, 2, 3, 4]
    if case == "virtual":
        expected = [_virtual_moments(b, 4) for b in batches]
        count = 4 * 16  # per virtual batch: 4 samples of 4x4 positions
    else:
        expected = [(b.mean(axis=(0, 1, 2)), b.var(axis=(0, 1, 2))) for b in batches]
        count = 16 * 16
    batch_mean = np.array(out["batch_mean"])
    batch_variance = np.array(out["batch_variance"])
    np.testing.assert_allclose(batch_mean, [m for m, _ in expected], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch_variance, [v for _, v in expected], rtol=1e-5)
    np.testing.assert_array_equal(out["count"], [count] * 4)

    # The last logged moving statistics are the layer's variables.
    np.testing.assert_array_equal(
        np.float32(out["moving_mean"][-1]), np.float32(out["layer_moving_mean"])
    )
    np.testing.assert_array_equal(
        np.float32(out["moving_variance"][-1]), np.float32(out["layer_moving_variance"])
    )
    if case != "renorm":  # renorm updates the moving variance through a moving standard deviation
        # The EMA of the logged batch statistics; the fused kernel feeds the Bessel-corrected
        # variance into it, the non-fused path the biased one. The gap probe (after steps 2
        # and 4) changed nothing in between.
        bessel = count / (count - 1) if case == "fused" else 1.0
        moving_mean, moving_variance = np.zeros(3), np.ones(3)
        for step in range(4):
            moving_mean = MOMENTUM * moving_mean + (1 - MOMENTUM) * batch_mean[step]
            moving_variance = (
                MOMENTUM * moving_variance + (1 - MOMENTUM) * bessel * batch_variance[step]
            )
            np.testing.assert_allclose(out["moving_mean"][step], moving_mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out["moving_variance"][step], moving_variance, rtol=1e-5)

    # Precise statistics of the layer's input (all 32 samples) and recalibration.
    for key in ("precise", "recalibrated"):
        np.testing.assert_allclose(out[f"{key}_mean"], x.mean(axis=(0, 1, 2)), rtol=1e-6)
        np.testing.assert_allclose(out[f"{key}_variance"], x.var(axis=(0, 1, 2)), rtol=1e-6)

    # The gap after the first step and at each epoch end on the stashed first batch (the BN
    # layer is the first layer).
    assert out["gap_steps"] == [1, 2, 4]
    assert np.isfinite(out["gap_local"]).all() and np.all(np.array(out["gap_local"]) > 0)
    assert np.isfinite(out["gap_train_loss"]).all() and np.isfinite(out["gap_inference_loss"]).all()
    if case in ("fused", "unfused"):
        # The last gap (after step 4) from numpy's biased moments of the probe batch and the
        # layer's final variables: what the training-mode and inference-mode outputs differ by.
        probe = x[:16]
        expected_local = gap.local_gap_from_stats(
            probe.mean(axis=(0, 1, 2)),
            probe.var(axis=(0, 1, 2)),
            np.array(out["layer_moving_mean"]),
            np.array(out["layer_moving_variance"]),
            np.array(out["layer_gamma"]),
            np.array(out["layer_beta"]),
            EPSILON,
        )
        np.testing.assert_allclose(out["gap_local"][-1], expected_local, rtol=1e-4)
        np.testing.assert_allclose(out["gap_local_derived"], out["gap_local"], rtol=1e-4)
    else:
        # Renorm's r/d correction and ghost batches are not a plain batch normalisation.
        assert np.isnan(out["gap_local_derived"]).all()
    if case == "virtual":
        assert "not a multiple of virtual_batch_size=4" in out["probe_error"]


def test_training_identical_with_and_without_callback():
    """Fused, non-fused, virtual-batch and renorm layers, dropout, gap probes with attribution every
    2 steps: weights, moving statistics, optimizer and metric state and history bit for bit."""
    out = _run("identical")
    assert out["n_state"] > 20
    assert out["identical"], "training with the callback must give the same state as without"
    assert out["same_history"]
    assert out["layers"] == ["fused", "renorm", "unfused", "virtual"]
    assert all(all(t == 1.0 for t in trained) for trained in out["training"].values())
    # 72 training samples in batches of 16 (the last one of 8): epochs end at steps 5, 10, 15.
    assert out["gap_steps"] == [1, 2, 4, 5, 6, 8, 10, 12, 14, 15]
    at_epoch_end = np.isin(out["gap_steps"], [5, 10, 15])
    for values in out["attribution"].values():
        values = np.array(values, dtype=np.float64)
        assert np.isfinite(values[at_epoch_end]).all() and np.isnan(values[~at_epoch_end]).all()
    # gap_scope="model" falls back to "batchnorm" for tf-keras, with a warning.
    assert any('gap_scope="model" is not supported for tf-keras' in w for w in out["warnings"])


@pytest.mark.parametrize("fused", [True, False])
def test_every_call_of_a_shared_layer_is_logged(fused):
    """tf-keras records the fused path's moments inside a tf.cond: calls still count per step."""
    result = _run("shared", json.dumps(fused))
    assert result["steps"] == [1, 2]
    np.testing.assert_allclose(result["mean"], [result["expected"]] * 2, rtol=1e-5)
