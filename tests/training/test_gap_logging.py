"""Train/inference gap logging: numbers against numpy, storage, cadence, and no side effects."""

from __future__ import annotations

import numpy as np
import pytest

from tb_bn_plugin import BatchNormCallback, metadata, read_stats
from tb_bn_plugin.numerics.gap import relative_rms_difference
from tb_bn_plugin.reading.load import read_gap
from tb_bn_plugin.reading.provider import open_logdir
from tb_bn_plugin.reading.tags import list_tags


def _bn(x, mean, variance, gamma, beta, eps):
    return gamma * (x - mean) / np.sqrt(variance + eps) + beta


def _at(stats, stat, step):
    steps, values = stats[stat]
    return values[list(steps).index(step)]


def test_single_bn_gap_matches_numpy(keras, tmp_path):
    """Input -> BN -> Dense(1, no bias): losses, metrics, layer gaps from logged stats, weights."""
    rng = np.random.RandomState(0)
    x = (rng.randn(40, 3) * [1.0, 2.0, 0.5] + [1.0, -2.0, 3.0]).astype("float32")
    y = rng.randn(40, 1).astype("float32")
    # A probe from another distribution: its batch statistics differ from the moving ones.
    px = (x[:12] * 1.3 + 0.5).astype("float32")
    py = rng.randn(12, 1).astype("float32")
    pw = rng.uniform(0.5, 2.0, size=12).astype("float32")

    inp = keras.Input((3,))
    bn = keras.layers.BatchNormalization(name="bn", momentum=0.5, epsilon=1e-3)
    head = keras.layers.Dense(1, use_bias=False, name="head")
    model = keras.Model(inp, head(bn(inp)))
    kernel = np.array([[1.0], [-0.5], [2.0]], dtype="float32")
    gamma = np.array([1.5, 0.5, 1.0], dtype="float32")
    beta = np.array([0.1, -0.2, 0.3], dtype="float32")
    head.set_weights([kernel])
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    # Learning rate 0: kernel, gamma and beta stay put; the moving statistics still move.
    model.compile(keras.optimizers.SGD(0.0), "mse", metrics=["mae"])
    cb = BatchNormCallback(
        str(tmp_path),
        log_every_n_steps=1,
        probe_data=(px, py, pw),
        gap_attribution=True,
        probe_size=64,
    )
    model.fit(x, y, batch_size=20, epochs=2, shuffle=False, verbose=0, callbacks=[cb])

    stats = read_stats(str(tmp_path))["train"]["bn"]
    gap = read_gap(str(tmp_path))["train"]
    # After the first step (the loss scale), then at the epoch ends.
    np.testing.assert_array_equal(gap.steps, [1, 2, 4])
    for i, step in enumerate(gap.steps):
        moving_mean = _at(stats, "moving_mean", step)
        moving_variance = _at(stats, "moving_variance", step)
        np.testing.assert_allclose(_at(stats, "gamma", step), gamma)
        train_out = _bn(px, px.mean(0), px.var(0), gamma, beta, 1e-3)
        infer_out = _bn(px, moving_mean, moving_variance, gamma, beta, 1e-3)
        losses, maes = [], []
        for out in (train_out, infer_out):
            pred = out @ kernel
            losses.append(
                np.sum(pw * np.mean((pred - py) ** 2, axis=1)) / len(px)
            )  # sample-weighted
            maes.append(np.mean(np.abs(pred - py)))  # an unweighted compiled metric
        np.testing.assert_allclose(gap.train_loss[i], losses[0], rtol=1e-5)
        np.testing.assert_allclose(gap.inference_loss[i], losses[1], rtol=1e-5)
        np.testing.assert_allclose(gap.metrics["mae"]["train"][i], maes[0], rtol=1e-5)
        np.testing.assert_allclose(gap.metrics["mae"]["inference"][i], maes[1], rtol=1e-5)
        assert abs(maes[0] - maes[1]) > 1e-2  # the modes really differ

        expected = relative_rms_difference(train_out, infer_out)
        assert expected > 0.05
        np.testing.assert_allclose(gap.compound["bn"][i], expected, rtol=1e-5)
        np.testing.assert_allclose(gap.local["bn"][i], expected, rtol=1e-5)
        np.testing.assert_allclose(gap.local_derived["bn"][i], gap.local["bn"][i], rtol=1e-4)
        # One BN layer accounts for the whole gap (attributed at epoch ends, not after step 1).
        if step == 1:
            assert np.isnan(gap.attribution["bn"][i])
        else:
            np.testing.assert_allclose(gap.attribution["bn"][i], 1.0, rtol=1e-5)

    (tag,) = [
        t for t in list_tags(open_logdir(str(tmp_path)))[0]["train"] if t.kind == metadata.KIND_GAP
    ]
    assert tag.tag == metadata.gap_tag()
    assert tag.content["losses"] == ["loss"] and tag.content["metrics"] == ["mae"]
    assert tag.content["layers"] == ["bn"] and tag.content["layer_fields"] == list(
        metadata.GAP_LAYER_FIELDS
    )
    assert tag.content["probe_size"] == 12 and tag.content["scope"] == "batchnorm"


def _conv_model(keras):
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Dense(3, name="pre")(
        inp
    )  # mode-independent: bn_in sees the same input in both passes
    h = keras.layers.BatchNormalization(name="bn_in", momentum=0.6)(h)
    h = keras.layers.Conv2D(4, 3, name="conv")(h)
    h = keras.layers.BatchNormalization(name="bn_conv", momentum=0.6)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dropout(0.4)(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, keras.layers.Dense(1, name="out")(h))


def test_stashed_probe_layer_gaps_and_cadence(keras, tmp_path):
    """Default probe = first training batch; local measured = derived; first BN compound = local."""
    rng = np.random.RandomState(1)
    x = (rng.randn(32, 6, 6, 2) * 2 + 1).astype("float32")
    y = rng.randn(32, 1).astype("float32")
    model = _conv_model(keras)
    model.compile(keras.optimizers.SGD(0.05), "mse", metrics=["mae", "mse"])
    cb = BatchNormCallback(str(tmp_path), gap_every_n_steps=3, gap_attribution=2, probe_size=6)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[cb])

    gap = read_gap(str(tmp_path))["train"]
    # Step 1 (the loss scale), 3 and 6 by step cadence, 4 and 8 at the epoch ends;
    # attribution at the 2nd epoch's end.
    np.testing.assert_array_equal(gap.steps, [1, 3, 4, 6, 8])
    for path in ("bn_in", "bn_conv"):
        assert np.isnan(gap.attribution[path][:4]).all() and np.isfinite(gap.attribution[path][4])
        np.testing.assert_allclose(gap.local_derived[path], gap.local[path], rtol=1e-4)
        assert (gap.local[path] > 0).all()
    np.testing.assert_allclose(gap.compound["bn_in"], gap.local["bn_in"], rtol=1e-6)
    assert not np.allclose(gap.compound["bn_conv"], gap.local["bn_conv"], rtol=1e-3)
    for name in ("mae", "mse"):
        assert (np.abs(gap.metrics[name]["train"] - gap.metrics[name]["inference"]) > 1e-4).all()

    # The probe is the first 6 samples of the first (unshuffled) batch: bn_in's local gap on x[:6].
    stats = read_stats(str(tmp_path))["train"]["bn_in"]
    pre_kernel, pre_bias = model.get_layer("pre").get_weights()  # after training, as at step 8
    h = x[:6] @ pre_kernel + pre_bias
    gamma, beta = _at(stats, "gamma", 8), _at(stats, "beta", 8)
    expected = relative_rms_difference(
        _bn(h, h.mean((0, 1, 2)), h.var((0, 1, 2)), gamma, beta, 1e-3),
        _bn(h, _at(stats, "moving_mean", 8), _at(stats, "moving_variance", 8), gamma, beta, 1e-3),
    )
    np.testing.assert_allclose(gap.local["bn_in"][-1], expected, rtol=1e-4)


def test_gap_disabled_writes_no_gap_and_stashes_nothing(keras, tmp_path):
    x = np.random.RandomState(2).randn(16, 4).astype("float32")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.BatchNormalization(), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append("train_step" in self.model.__dict__)

    cb = BatchNormCallback(str(tmp_path), log_every_n_steps=1, gap_every_n_epochs=0)
    model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=[cb, Spy()])
    kinds = {t.kind for t in list_tags(open_logdir(str(tmp_path)))[0]["train"]}
    assert metadata.KIND_GAP not in kinds and metadata.KIND_LAYER_SUMMARY in kinds
    assert seen == [False, False] and "train_step" not in model.__dict__
    assert read_gap(str(tmp_path)) == {}


def test_gap_pass_changes_no_variable_tracker_or_capture(keras):
    """Model variables (moving stats, RNG seeds), metric trackers, capture variables: untouched."""
    from tb_bn_plugin.training.capture import StatsCapture, find_batchnorm_layers
    from tb_bn_plugin.training.gap_probe import GapProbe
    from tb_bn_plugin.training.probe_batch import probe_batch_from_data

    rng = np.random.RandomState(3)
    x = rng.randn(24, 6, 6, 2).astype("float32")
    y = rng.randn(24, 1).astype("float32")
    model = _conv_model(keras)
    model.compile("adam", "mse", metrics=["mae"])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    refs = find_batchnorm_layers(model)
    capture = StatsCapture(refs, model.optimizer.iterations, model.distribute_strategy)
    capture.install()

    def state():
        variables = model.variables + model.metrics_variables + model.optimizer.variables
        slots = [v for s in capture._slots for v in (s.stats, s.count, s.step)]
        return [np.array(v.numpy()) for v in variables + slots]

    before = state()
    results = {k: float(v) for k, v in model.get_metrics_result().items()}
    for scope in ("batchnorm", "model"):
        probe = GapProbe(
            model, refs, refs, probe_batch_from_data((x[:10], y[:10]), 256), scope, capture
        )
        first = probe.evaluate(attribution=True)
        again = probe.evaluate(attribution=True)
        # Dropout masks do not advance either.
        np.testing.assert_array_equal(first.record(), again.record())
        assert np.isfinite(first.record()).all()
    capture.uninstall()
    after = state()
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert {k: float(v) for k, v in model.get_metrics_result().items()} == results


def test_multi_output_dict_losses(keras, tmp_path):
    rng = np.random.RandomState(4)
    x = rng.randn(24, 5).astype("float32")
    ys = {"a": rng.randn(24, 1).astype("float32"), "b": rng.randn(24, 2).astype("float32")}
    inp = keras.Input((5,))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4)(inp))
    model = keras.Model(
        inp, {"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(2, name="b")(h)}
    )
    model.compile(
        "sgd",
        loss={"a": "mse", "b": "mae"},
        loss_weights={"a": 1.0, "b": 0.5},
        metrics={"a": ["mae"]},
    )
    cb = BatchNormCallback(str(tmp_path), gap_attribution=True)
    model.fit(x, ys, batch_size=12, epochs=1, verbose=0, callbacks=[cb])
    gap = read_gap(str(tmp_path))["train"]
    assert {"a_loss", "b_loss", "a_mae"} <= set(gap.metrics)
    for mode, total in (("train", gap.train_loss), ("inference", gap.inference_loss)):
        np.testing.assert_allclose(
            total, gap.metrics["a_loss"][mode] + 0.5 * gap.metrics["b_loss"][mode], rtol=1e-5
        )
    # Attributed at the epoch end, not in the measurement after step 1.
    assert np.isnan(gap.attribution["bn"][0])
    np.testing.assert_allclose(gap.attribution["bn"][1:], 1.0, rtol=1e-4)


def test_subclassed_model_and_xla_train_step(keras, tmp_path):
    """The stash works in an XLA-compiled train step and for models built by their first step."""

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)
            self.bn = keras.layers.BatchNormalization()
            self.out = keras.layers.Dense(1)

        def call(self, inputs, training=None):
            return self.out(self.bn(self.dense(inputs), training=training))

    rng = np.random.RandomState(5)
    x = rng.randn(16, 4).astype("float32")
    model = Net()
    model.compile("sgd", "mse", jit_compile=True)
    cb = BatchNormCallback(str(tmp_path), probe_size=3)
    model.fit(x, x[:, :1], batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    gap = read_gap(str(tmp_path))["train"]
    np.testing.assert_array_equal(gap.steps, [1, 2, 4])
    (path,) = gap.compound
    assert np.isfinite(gap.train_loss).all() and np.isfinite(gap.compound[path]).all()
    assert (gap.local_derived[path] > 0).all()


def test_probe_data_validation():
    with pytest.raises(TypeError):
        BatchNormCallback("unused", probe_data=np.zeros((4, 2)))
    with pytest.raises(ValueError):
        BatchNormCallback("unused", probe_data=(np.zeros((4, 2)), np.zeros((3, 1))))
    with pytest.raises(ValueError):
        BatchNormCallback("unused", gap_scope="everything")
    with pytest.raises(ValueError):
        BatchNormCallback("unused", gap_every_n_steps=0)
