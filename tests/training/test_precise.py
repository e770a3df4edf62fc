"""Precise BatchNorm statistics and recalibration: numbers against exact numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from tb_bn_plugin.numerics import ema

# -- precise_stats in real Keras ------------------------------------------------------


def _weights(model):
    return [w.numpy().copy() for w in model.weights]


def _assert_unchanged(model, before):
    after = _weights(model)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert np.array_equal(a, b)


def _two_bn_model(keras):
    inp = keras.Input((4,))
    h = keras.layers.BatchNormalization(name="bn1", momentum=0.5)(inp)
    h = keras.layers.Dense(3, name="hidden")(h)
    h = keras.layers.BatchNormalization(name="bn2", momentum=0.5)(h)
    return keras.Model(inp, keras.layers.Dense(1)(h))


def test_precise_stats_match_numpy_inference_inputs(keras):
    import tensorflow as tf

    from tb_bn_plugin.training.precise import precise_stats

    rng = np.random.RandomState(0)
    x = (rng.randn(50, 4) * [1, 2, 3, 4] + [5, -1, 0, 2]).astype("float32")
    model = _two_bn_model(keras)
    model.compile("sgd", "mse")
    model.fit(x, rng.randn(50, 1).astype("float32"), batch_size=10, epochs=1, verbose=0)
    before = _weights(model)

    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros((50, 1), "float32"))).batch(
        16
    )  # 16, 16, 16, 2
    stats = precise_stats(model, ds, progress=False)
    _assert_unchanged(model, before)
    assert all("call" not in model.get_layer(n).__dict__ for n in ("bn1", "bn2"))

    assert stats["bn1"]["count"] == 50
    np.testing.assert_allclose(stats["bn1"]["mean"], x.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        stats["bn1"]["variance"], x.astype(np.float64).var(axis=0), rtol=1e-10
    )

    # bn2's input at inference: Dense(bn1 normalising with its moving statistics).
    bn1 = model.get_layer("bn1")
    normed = (x - bn1.moving_mean.numpy()) / np.sqrt(bn1.moving_variance.numpy() + bn1.epsilon)
    normed = normed * bn1.gamma.numpy() + bn1.beta.numpy()
    kernel, bias = model.get_layer("hidden").get_weights()
    h = normed.astype(np.float64) @ kernel + bias
    assert stats["bn2"]["count"] == 50
    np.testing.assert_allclose(stats["bn2"]["mean"], h.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["bn2"]["variance"], h.var(axis=0), rtol=1e-5)

    # num_batches stops early; x-only datasets work.
    first = precise_stats(
        model, tf.data.Dataset.from_tensor_slices(x).batch(16), num_batches=2, progress=False
    )
    assert first["bn1"]["count"] == 32
    np.testing.assert_allclose(
        first["bn1"]["mean"], x[:32].astype(np.float64).mean(axis=0), rtol=1e-12
    )
    _assert_unchanged(model, before)


def test_precise_stats_large_mean_numpy_input_conv_layout(keras, capsys):
    from tb_bn_plugin.training.precise import precise_stats

    rng = np.random.RandomState(2)
    x = (rng.randn(23, 3, 3, 2) + 1e4).astype("float32")
    inp = keras.Input((3, 3, 2))
    out = keras.layers.BatchNormalization(name="bn")(inp)
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(out)))
    before = _weights(model)
    stats = precise_stats(model, (x, np.zeros(23)), batch_size=5, progress=True)  # 5 x 4 + 3
    _assert_unchanged(model, before)
    ref = x.astype(np.float64)
    assert stats["bn"]["count"] == 23 * 9
    np.testing.assert_allclose(stats["bn"]["mean"], ref.mean(axis=(0, 1, 2)), rtol=1e-13)
    np.testing.assert_allclose(stats["bn"]["variance"], ref.var(axis=(0, 1, 2)), rtol=1e-9)
    assert "5/5" in capsys.readouterr().out  # Progbar ran


def test_precise_stats_masked_inputs(keras):
    from tb_bn_plugin.training.precise import precise_stats

    tokens = np.array([[1, 2, 0, 0], [3, 1, 2, 0], [4, 0, 0, 0]], "int32")
    inp = keras.Input((4,), dtype="int32")
    emb = keras.layers.Embedding(5, 3, mask_zero=True, name="emb")(inp)
    out = keras.layers.BatchNormalization(name="bn")(emb)
    model = keras.Model(inp, out)
    stats = precise_stats(model, tokens, batch_size=2, progress=False)
    table = model.get_layer("emb").get_weights()[0].astype(np.float64)
    seen = table[tokens[tokens != 0]]
    assert stats["bn"]["count"] == len(seen) == 6
    np.testing.assert_allclose(stats["bn"]["mean"], seen.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["bn"]["variance"], seen.var(axis=0), rtol=1e-5)


def _gap(model, x, y):
    """(inference-mode loss, training-mode loss on the full data), model left unchanged."""
    saved = _weights(model)
    infer = float(np.mean((model(x, training=False).numpy() - y) ** 2))
    train = float(np.mean((model(x, training=True).numpy() - y) ** 2))
    for w, v in zip(model.weights, saved):
        w.assign(v)
    return infer, train


def test_recalibrate_closes_slow_momentum_gap(keras):
    from tb_bn_plugin.training.precise import ema_errors, precise_stats, recalibrate

    rng = np.random.RandomState(3)
    x = (rng.randn(256, 6) * 2 + 3).astype("float32")
    y = (x @ rng.randn(6, 1) + 1).astype("float32")
    inp = keras.Input((6,))
    h = keras.layers.Dense(16)(inp)
    h = keras.layers.BatchNormalization(name="bn1", momentum=0.999)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dense(8)(h)
    h = keras.layers.BatchNormalization(name="bn2", momentum=0.999)(h)
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit(x, y, batch_size=64, epochs=5, verbose=0)  # 20 steps: EMA still ~98% initial value

    infer_before, train_loss = _gap(model, x, y)
    gap_before = abs(infer_before - train_loss)
    errors_before = ema_errors(model, precise_stats(model, x, progress=False))

    frozen = {w.path: w.numpy().copy() for w in model.weights if "moving" not in w.path}
    report = recalibrate(model, x, batch_size=64, progress=False)
    for w in model.weights:  # only the moving statistics changed
        if "moving" not in w.path:
            assert np.array_equal(w.numpy(), frozen[w.path])

    infer_after, train_after = _gap(model, x, y)
    assert train_after == pytest.approx(train_loss, rel=1e-6)
    gap_after = abs(infer_after - train_loss)
    print(
        f"gap before {gap_before:.4g} (inference {infer_before:.4g} vs train {train_loss:.4g}), "
        f"after {gap_after:.4g}; passes {report.passes}\n{report}"
    )
    assert gap_after < gap_before / 20

    # bn1's statistics are exact (its input does not depend on another BN), bn2 converged to its
    # input's statistics given the recalibrated bn1: a fresh measurement agrees with the variables.
    errors_after = ema_errors(model, precise_stats(model, x, progress=False))
    for path in ("bn1", "bn2"):
        assert (
            errors_after[path].max_mean_shift < 1e-4
            and errors_after[path].max_abs_log_var_ratio < 1e-4
        )
        assert errors_before[path].score > 100 * errors_after[path].score
    assert report.passes == 3  # bn1, then bn2 given bn1, then a confirming pass
    assert [r.path for r in report.layers] == ["bn1", "bn2"]
    layer1 = report.layers[0]
    np.testing.assert_allclose(
        layer1.error_before.mean_shift, errors_before["bn1"].mean_shift, rtol=1e-6
    )
    assert layer1.max_abs_mean_change > 0.1 and layer1.count == 256
    text = str(report)
    assert "bn1" in text and "bn2" in text and "3 passes" in text


def test_precise_stats_monitor_logs_ema_error(keras, tmp_path):
    import tensorflow as tf

    from tb_bn_plugin import BatchNormCallback, read_stats
    from tb_bn_plugin.metadata import ema_error_tag
    from tb_bn_plugin.training.precise import PreciseStatsMonitor

    rng = np.random.RandomState(4)
    x = (rng.randn(32, 4) + 2).astype("float32")
    model = _two_bn_model(keras)
    model.compile("sgd", "mse")
    monitor = PreciseStatsMonitor(str(tmp_path), x[:16], batch_size=8)
    model.fit(
        x,
        rng.randn(32, 1).astype("float32"),
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[BatchNormCallback(str(tmp_path), log_every_n_steps=2), monitor],
    )
    assert [step for step, _ in monitor.history] == [4, 8]
    errors = monitor.history[-1][1]
    assert set(errors) == {"bn1", "bn2"}
    # The monitor's numbers are ema_error against numpy statistics of the sample.
    bn1 = model.get_layer("bn1")
    expected = ema.measure_ema_error(
        bn1.moving_mean.numpy(),
        bn1.moving_variance.numpy(),
        x[:16].astype(np.float64).mean(0),
        x[:16].astype(np.float64).var(0),
        bn1.epsilon,
    )
    np.testing.assert_allclose(errors["bn1"].as_array(), expected.as_array(), rtol=1e-5)
    assert isinstance(monitor.findings(), list)

    logged = {}
    for path in tf.io.gfile.glob(str(tmp_path / "train" / "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag.endswith("/ema_error"):
                    logged.setdefault(value.tag, []).append(
                        (event.step, tf.make_ndarray(value.tensor))
                    )
    assert set(logged) == {ema_error_tag("bn1"), ema_error_tag("bn2")}
    assert [s for s, _ in logged[ema_error_tag("bn1")]] == [4, 8]
    np.testing.assert_allclose(logged[ema_error_tag("bn1")][-1][1], errors["bn1"].as_array())
    # The callback's own data is still readable next to the new tags.
    assert set(read_stats(str(tmp_path))["train"]) == {"bn1", "bn2"}
