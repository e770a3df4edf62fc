"""The EMA-weights gap (``use_ema=True``): logged losses against numpy, side effects, the rule."""

from __future__ import annotations

import numpy as np
import pytest

from tb_bn_plugin import BatchNormCallback
from tb_bn_plugin.diagnostics import diagnose
from tb_bn_plugin.reading.load import load_runs
from tb_bn_plugin.reading.provider import open_logdir


def _data():
    rng = np.random.RandomState(0)
    x = (rng.randn(64, 3) * [1.0, 2.0, 0.5] + [1.0, -2.0, 3.0]).astype("float32")
    y = (x @ np.array([[0.5], [-1.0], [2.0]]) + 0.1 * rng.randn(64, 1)).astype("float32")
    return x, y


def _fit(keras, log_dir, use_ema: bool, with_callback: bool = True):
    keras.utils.set_random_seed(7)
    x, y = _data()
    inp = keras.Input((3,))
    bn = keras.layers.BatchNormalization(name="bn", momentum=0.9, epsilon=1e-3)
    model = keras.Model(inp, keras.layers.Dense(1, name="head")(bn(inp)))
    optimizer = keras.optimizers.Adam(0.05, use_ema=use_ema, ema_momentum=0.9)
    model.compile(optimizer, "mse")
    callbacks = []
    if with_callback:
        callbacks = [BatchNormCallback(str(log_dir), log_every_n_steps=1, probe_data=(x, y))]
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
    return model, x, y


def _mse_numpy(model, x, y, mean, variance):
    """The model's MSE on (x, y) with its BN layer normalising with ``mean``/``variance``."""
    bn, head = model.get_layer("bn"), model.get_layer("head")
    gamma, beta = (np.asarray(v, np.float64) for v in (bn.gamma, bn.beta))
    kernel, bias = (np.asarray(v, np.float64) for v in head.weights)
    normalised = gamma * (x - mean) / np.sqrt(variance + bn.epsilon) + beta
    return float(np.mean(np.square(normalised @ kernel + bias - y)))


def test_ema_weights_gap_matches_numpy(keras, tmp_path):
    model, x, y = _fit(keras, tmp_path, use_ema=True)
    run = load_runs(open_logdir(str(tmp_path)))["train"]
    gap = run.ema_weights_gap
    assert gap is not None and list(gap.steps) == [12]
    # After fit the model holds the EMA weights (finalize_variable_values) and the moving
    # statistics of the live weights: inference mode normalises with those.
    bn = model.get_layer("bn")
    moving = np.asarray(bn.moving_mean, np.float64), np.asarray(bn.moving_variance, np.float64)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    assert gap.inference_loss[0] == pytest.approx(_mse_numpy(model, x64, y64, *moving), rel=1e-4)
    # Statistics re-estimated for the EMA weights: the probe's own (biased) batch moments.
    probe_moments = x64.mean(axis=0), x64.var(axis=0)
    assert gap.train_loss[0] == pytest.approx(_mse_numpy(model, x64, y64, *probe_moments), rel=1e-4)
    # The epoch-end gaps are those of the live weights, measured before fit swapped them in.
    assert list(run.gap.steps) == [1, 4, 8, 12]


def test_ema_weights_gap_changes_nothing(keras, tmp_path):
    logged, _, _ = _fit(keras, tmp_path / "logged", use_ema=True)
    bare, _, _ = _fit(keras, tmp_path / "bare", use_ema=True, with_callback=False)
    for a, b in zip(logged.get_weights(), bare.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_no_ema_weights_gap_without_ema(keras, tmp_path):
    _fit(keras, tmp_path, use_ema=False)
    run = load_runs(open_logdir(str(tmp_path)))["train"]
    assert run.ema_weights_gap is None and run.gap is not None
    assert not [f for f in diagnose(run) if f.code == "ema-weights-stale-stats"]
