"""A BatchNormalization layer called several times per training step: every call captured.

Real Keras 3 training on synthetic data; the per-call statistics are checked
against numpy moments of the batch each call saw.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tb_bn_plugin import BatchNormCallback, read_stats
from tb_bn_plugin.cli.main import main
from tb_bn_plugin.diagnostics import diagnose
from tb_bn_plugin.numerics.moments import call_divergence
from tb_bn_plugin.reading.load import load_runs
from tb_bn_plugin.reading.provider import open_logdir


def _two_halves(n=32, d=3, seed=0):
    """x = [a | b]: two towers' inputs with different distributions, and a target."""
    rng = np.random.RandomState(seed)
    a = rng.randn(n, d) * 1.0 + 0.5
    b = rng.randn(n, d) * 3.0 - 2.0
    return np.concatenate([a, b], axis=1).astype("float32"), rng.randn(n, 1).astype("float32")


def _siamese(keras, d=3, momentum=0.9):
    """One BN normalising tower A's input, then tower B's (weights shared)."""
    inp = keras.Input((2 * d,))
    shared = keras.layers.BatchNormalization(name="shared_bn", momentum=momentum)
    left = shared(inp[:, :d])
    right = shared(inp[:, d:])
    h = keras.layers.Concatenate()([left, right])
    out = keras.layers.Dense(1, name="head")(keras.layers.BatchNormalization(name="bn")(h))
    return keras.Model(inp, out)


def _ema_two_calls(first, second, momentum, initial):
    """Keras 3 moving statistic after each step whose two calls update it in order."""
    moving = np.full(first.shape[1], initial, dtype=np.float64)
    out = []
    for a, b in zip(first, second):
        moving = moving * momentum + a * (1 - momentum)
        moving = moving * momentum + b * (1 - momentum)
        out.append(moving.copy())
    return np.array(out)


@pytest.mark.parametrize("run_eagerly", [False, True])
def test_every_call_of_a_shared_layer_is_logged_against_numpy(keras, tmp_path, run_eagerly):
    d = 3
    x, y = _two_halves(d=d)
    model = _siamese(keras, d=d)
    model.compile(optimizer="sgd", loss="mse", run_eagerly=run_eagerly)
    model.fit(
        x,
        y,
        batch_size=len(x),
        epochs=4,
        shuffle=False,
        verbose=0,
        callbacks=[BatchNormCallback(str(tmp_path), log_every_n_steps=1)],
    )
    stats = read_stats(str(tmp_path))["train"]
    layer = stats["shared_bn"]
    a, b = x[:, :d].astype(np.float64), x[:, d:].astype(np.float64)
    steps, call_mean = layer["call_batch_mean"]
    np.testing.assert_array_equal(steps, [1, 2, 3, 4])
    assert call_mean.shape == (4, 2, d)
    # Full batch, unshuffled, BN first in each tower: call 0 sees a, call 1 sees b every step.
    np.testing.assert_allclose(call_mean[:, 0], np.tile(a.mean(0), (4, 1)), rtol=1e-5)
    np.testing.assert_allclose(call_mean[:, 1], np.tile(b.mean(0), (4, 1)), rtol=1e-5)
    call_var = layer["call_batch_variance"][1]
    np.testing.assert_allclose(call_var[:, 0], np.tile(a.var(0), (4, 1)), rtol=1e-4)
    np.testing.assert_allclose(call_var[:, 1], np.tile(b.var(0), (4, 1)), rtol=1e-4)
    np.testing.assert_array_equal(layer["call_count"][1], np.full((4, 2), len(x)))
    # The layer's own batch statistics are call 0's (schema version 2).
    np.testing.assert_allclose(layer["batch_mean"][1], call_mean[:, 0], rtol=1e-6)
    # Keras 3 updates the moving statistics once per call: a mixture of both towers.
    np.testing.assert_allclose(
        layer["moving_mean"][1],
        _ema_two_calls(call_mean[:, 0], call_mean[:, 1], 0.9, 0.0),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        layer["moving_variance"][1],
        _ema_two_calls(call_var[:, 0], call_var[:, 1], 0.9, 1.0),
        rtol=1e-4,
    )
    # A layer called once has no per-call series.
    assert "call_batch_mean" not in stats["bn"]
    (run,) = load_runs(open_logdir(str(tmp_path))).values()
    assert run.layers["shared_bn"].calls.calls == 2 and run.layers["bn"].calls is None


def _fit_siamese(keras, x, y, log_dir, epochs=4, batch_size=None, d=3):
    model = _siamese(keras, d=d)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(
        x,
        y,
        batch_size=batch_size or len(x),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[BatchNormCallback(str(log_dir), log_every_n_steps=1)],
    )
    (run,) = load_runs(open_logdir(str(log_dir))).values()
    return run


def test_shared_layer_fires_on_differently_distributed_calls_with_numpy_evidence(
    keras, tmp_path, capsys
):
    d = 3
    x, y = _two_halves(d=d)
    findings = [
        f for f in diagnose(_fit_siamese(keras, x, y, tmp_path)) if f.code == "shared-layer"
    ]
    (finding,) = findings
    assert finding.layers == ["shared_bn"] and finding.severity == "warning"
    a, b = x[:, :d].astype(np.float64), x[:, d:].astype(np.float64)
    eps = 1e-3  # Keras' default epsilon
    shift = np.abs(a.mean(0) - b.mean(0)) / np.sqrt((a.var(0) + b.var(0)) / 2 + eps)
    log_var = np.abs(np.log((a.var(0) + eps) / (b.var(0) + eps)))
    np.testing.assert_allclose(finding.evidence["mean_shift"], np.median(shift), rtol=1e-4)
    np.testing.assert_allclose(finding.evidence["log_var_ratio"], np.median(log_var), rtol=1e-3)
    assert finding.evidence["calls"] == 2 and finding.evidence["count_per_call"] == [32.0, 32.0]
    assert "concatenated batch" in finding.fix and "own BatchNormalization" in finding.fix

    # tb-bn report: the layer's calls and their divergence, JSON and text.
    status = main(["report", str(tmp_path), "--json", "--fail-on", "warning"])
    report = json.loads(capsys.readouterr().out)
    assert status == 1
    (layer,) = [entry for entry in report["runs"][0]["layers"] if entry["path"] == "shared_bn"]
    assert layer["calls"] == 2
    np.testing.assert_allclose(layer["call_divergence"]["mean_shift"], np.median(shift), rtol=1e-4)
    assert "shared-layer" in {f["code"] for f in report["runs"][0]["findings"]}
    main(["report", str(tmp_path), "--fail-on", "never"])
    text = capsys.readouterr().out
    assert "shared_bn (2 calls)" in text and "shared-layer" in text


def test_shared_layer_quiet_when_calls_see_one_distribution(keras, tmp_path):
    """A Siamese net on two random halves of the same data: sampling noise only, no warning."""
    d = 8
    rng = np.random.RandomState(1)
    x = (rng.randn(512, 2 * d) * 2.0 + 1.0).astype("float32")
    y = (x[:, :d].sum(1, keepdims=True) - x[:, d:].sum(1, keepdims=True)).astype("float32")
    run = _fit_siamese(keras, x, y, tmp_path, epochs=2, batch_size=32, d=d)
    assert run.layers["shared_bn"].calls.calls == 2
    assert not [f for f in diagnose(run) if f.severity in ("warning", "error")]


def test_call_divergence_against_direct_pairwise_formula():
    rng = np.random.RandomState(0)
    mean, variance = rng.randn(5, 3, 4), rng.rand(5, 3, 4) + 0.1
    shift, log_var = call_divergence(mean, variance, 1e-3)
    for p in range(5):
        for c in range(4):
            pairs = [(j, k) for j in range(3) for k in range(3) if j < k]
            d = [
                abs(mean[p, j, c] - mean[p, k, c])
                / np.sqrt((variance[p, j, c] + variance[p, k, c]) / 2 + 1e-3)
                for j, k in pairs
            ]
            r = [
                abs(np.log((variance[p, j, c] + 1e-3) / (variance[p, k, c] + 1e-3)))
                for j, k in pairs
            ]
            assert shift[p, c] == pytest.approx(max(d)) and log_var[p, c] == pytest.approx(max(r))


def test_calls_beyond_the_captured_ones_warn_naming_the_layer(keras, tmp_path):
    """Five calls per step on TensorFlow: the first four are logged, a UserWarning says so."""
    d = 2
    inp = keras.Input((5 * d,))
    shared = keras.layers.BatchNormalization(name="shared_bn")
    outs = [shared(inp[:, i * d : (i + 1) * d]) for i in range(5)]
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Concatenate()(outs)))
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.RandomState(0).randn(16, 5 * d).astype("float32") + np.repeat(np.arange(5), d)
    with pytest.warns(UserWarning, match="'shared_bn' is called more than 4 times"):
        model.fit(
            x,
            np.zeros((16, 1), "float32"),
            batch_size=16,
            epochs=2,
            verbose=0,
            callbacks=[BatchNormCallback(str(tmp_path), log_every_n_steps=1)],
        )
    steps, mean = read_stats(str(tmp_path))["train"]["shared_bn"]["call_batch_mean"]
    assert mean.shape == (2, 4, d)
    x64 = x.astype(np.float64)
    expected = [x64[:, i * d : (i + 1) * d].mean(0) for i in range(4)]
    np.testing.assert_allclose(mean, [expected] * 2, rtol=1e-5)
