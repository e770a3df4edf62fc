"""BatchNormCallback in real Keras 3 training: numbers against numpy, layouts, edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tb_bn_plugin import BatchNormCallback, NoBatchNormWarning, read_stats
from tb_bn_plugin.reading.graph import read_run_graph


def _data(shape, n=32, seed=0, loc=1.5, scale=2.0):
    rng = np.random.RandomState(seed)
    x = (rng.randn(n, *shape) * scale + loc).astype("float32")
    y = rng.randn(n, 1).astype("float32")
    return x, y


def _fit(model, x, y, log_dir, epochs=3, batch_size=None, **kwargs):
    model.compile(optimizer="sgd", loss="mse")
    cb = BatchNormCallback(str(log_dir), log_every_n_steps=1, **kwargs)
    model.fit(
        x,
        y,
        batch_size=batch_size or len(x),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[cb],
    )
    return read_stats(str(log_dir))["train"]


def _ema(batch, momentum, initial):
    out, moving = [], np.full(batch.shape[1], initial, dtype=np.float64)
    for row in batch:
        moving = moving * momentum + row * (1 - momentum)
        out.append(moving.copy())
    return np.array(out)


def test_first_layer_batch_and_moving_stats_match_numpy(keras, tmp_path):
    x, y = _data((6, 6, 3))
    inp = keras.Input((6, 6, 3))
    h = keras.layers.BatchNormalization(name="bn_in", momentum=0.8)(inp)
    h = keras.layers.Conv2D(4, 3)(h)
    h = keras.layers.BatchNormalization(name="bn_conv", momentum=0.9)(h)
    out = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    stats = _fit(model, x, y, tmp_path, epochs=4)

    layer = stats["bn_in"]
    steps, bm = layer["batch_mean"]
    np.testing.assert_array_equal(steps, [1, 2, 3, 4])
    # Full-batch steps, unshuffled: the first layer sees x itself every step.
    np.testing.assert_allclose(bm, np.tile(x.mean(axis=(0, 1, 2)), (4, 1)), rtol=1e-5)
    np.testing.assert_allclose(
        layer["batch_variance"][1], np.tile(x.var(axis=(0, 1, 2)), (4, 1)), rtol=1e-4
    )
    np.testing.assert_allclose(layer["moving_mean"][1], _ema(bm, 0.8, 0.0), rtol=1e-5)
    np.testing.assert_allclose(
        layer["moving_variance"][1], _ema(layer["batch_variance"][1], 0.8, 1.0), rtol=1e-5
    )

    # Deeper layer: its EMA follows its own logged batch statistics step by step.
    conv = stats["bn_conv"]
    np.testing.assert_allclose(
        conv["moving_mean"][1], _ema(conv["batch_mean"][1], 0.9, 0.0), rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(
        conv["moving_variance"][1], _ema(conv["batch_variance"][1], 0.9, 1.0), rtol=1e-4
    )
    # Final logged values are the layer's variables after fit.
    bn = model.get_layer("bn_conv")
    for stat in ("moving_mean", "moving_variance", "gamma", "beta"):
        np.testing.assert_array_equal(
            conv[stat][1][-1], getattr(bn, stat).numpy().astype(np.float64)
        )


def test_every_logged_step_is_read_back_beyond_tensorboard_reservoir(keras, tmp_path):
    x, y = _data((5,), n=8)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(3), keras.layers.BatchNormalization()]
    )
    model.compile("sgd", "mse")
    model.fit(
        x,
        np.zeros((8, 3), "float32"),
        batch_size=4,
        epochs=12,
        verbose=0,
        callbacks=[BatchNormCallback(str(tmp_path), log_every_n_steps=1)],
    )
    (layer,) = read_stats(str(tmp_path))["train"].values()
    np.testing.assert_array_equal(layer["moving_mean"][0], np.arange(1, 25))


def test_channels_first_rank5_and_rank2_layouts(keras, tmp_path):
    x, y = _data((3, 4, 4, 2), n=16)  # channels at axis 1
    inp = keras.Input((3, 4, 4, 2))
    h = keras.layers.BatchNormalization(axis=1, name="bn_cf")(inp)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(5)(h)
    h = keras.layers.BatchNormalization(name="bn_dense")(h)
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    stats = _fit(model, x, y, tmp_path, epochs=2)
    np.testing.assert_allclose(
        stats["bn_cf"]["batch_mean"][1][0], x.mean(axis=(0, 2, 3, 4)), rtol=1e-5
    )
    np.testing.assert_allclose(
        stats["bn_cf"]["batch_variance"][1][0], x.var(axis=(0, 2, 3, 4)), rtol=1e-4
    )
    assert stats["bn_dense"]["batch_mean"][1].shape == (2, 5)


def test_layer_facts_logged_in_summary_records(keras, tmp_path):
    from tb_bn_plugin.reading.load import load_runs
    from tb_bn_plugin.reading.provider import open_logdir
    from tb_bn_plugin.reading.tags import list_tags

    x, y = _data((4, 4, 2), n=16)
    inp = keras.Input((4, 4, 2))
    h = keras.layers.BatchNormalization(
        name="bn_a", momentum=0.7, epsilon=1e-2, scale=False, center=False
    )(inp)
    frozen = keras.layers.BatchNormalization(name="bn_frozen")
    frozen.trainable = False
    h = frozen(h)
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    model.compile("sgd", "mse")
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[BatchNormCallback(str(tmp_path), log_every_n_steps=1)],
    )
    run = load_runs(open_logdir(str(tmp_path)))["train"]
    a, f = run.layers["bn_a"], run.layers["bn_frozen"]
    assert (
        a.config.momentum,
        a.config.epsilon,
        a.config.axis,
        a.config.scale,
        a.config.center,
    ) == (0.7, 1e-2, 3, False, False)
    assert set(a.channels) == {"batch_mean", "batch_variance", "moving_mean", "moving_variance"}
    np.testing.assert_array_equal(a.steps, [1, 2])
    np.testing.assert_array_equal(a.info["training"], [1, 1])
    np.testing.assert_array_equal(a.info["count"], [8 * 4 * 4] * 2)  # batch x spatial positions
    np.testing.assert_array_equal(a.info["momentum"], [0.7, 0.7])
    # Summary record: across-channel mean of the batch mean equals numpy's.
    first = x[:8].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(a.summary_column("batch_mean", "mean")[0], first.mean(), rtol=1e-5)
    np.testing.assert_allclose(a.summary_column("batch_mean", "max")[0], first.max(), rtol=1e-5)
    # A frozen layer runs in inference mode during fit: no batch statistics.
    np.testing.assert_array_equal(f.info["training"], [0, 0])
    np.testing.assert_array_equal(f.info["trainable"], [0, 0])
    assert np.isnan(f.channels["batch_mean"]).all()
    np.testing.assert_array_equal(f.channels["moving_mean"], 0.0)
    # Single device: no per-replica payload.
    assert a.replicas is None and f.replicas is None
    tags, _ = list_tags(open_logdir(str(tmp_path)))
    assert "layer_replicas" not in {t.kind for t in tags["train"]}


def test_nested_submodels_custom_layers_and_lazy_subclassed_model(keras, tmp_path):
    def block(name):
        i = keras.Input((4,))
        return keras.Model(
            i, keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4)(i)), name=name
        )

    class Wrapped(keras.layers.Layer):
        def build(self, input_shape):
            self.bn = keras.layers.BatchNormalization(name="inner_bn")
            self.bn.build(input_shape)

        def call(self, x, training=None):
            return self.bn(x, training=training)

    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="net")
            self.enc = block("encoder")
            self.dec = block("decoder")
            self.wrapped = Wrapped(name="wrapped")
            self.head = keras.layers.Dense(1)

        def call(self, x, training=None):
            return self.head(
                self.wrapped(
                    self.dec(self.enc(x, training=training), training=training), training=training
                )
            )

    x, y = _data((4,), n=16)
    model = Net()  # not built or called yet
    stats = _fit(model, x, y, tmp_path, epochs=2)
    assert sorted(stats) == ["decoder/bn", "encoder/bn", "wrapped/inner_bn"]
    assert all(stats[p]["batch_mean"][1].shape == (2, 4) for p in stats)
    # A subclassed model is built by its first training step, so capture starts after it.
    for path in stats:
        steps, batch_mean = stats[path]["batch_mean"]
        np.testing.assert_array_equal(steps, [1, 2])
        assert np.isnan(batch_mean[0]).all() and np.isfinite(batch_mean[1]).all()


def test_masked_inputs_use_only_unmasked_positions(keras, tmp_path):
    rng = np.random.RandomState(3)
    tokens = rng.randint(1, 20, size=(16, 6))
    tokens[:, 4:] = 0  # padding, masked out
    y = rng.randn(16, 1).astype("float32")
    inp = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(20, 3, mask_zero=True, name="emb")
    h = keras.layers.BatchNormalization(name="bn_masked")(emb(inp))
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h)))
    model.compile("sgd", "mse")
    table = emb.embeddings.numpy()
    model.fit(
        tokens,
        y,
        batch_size=16,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[BatchNormCallback(str(tmp_path), log_every_n_steps=1)],
    )
    layer = read_stats(str(tmp_path))["train"]["bn_masked"]
    values = table[tokens[:, :4]].reshape(-1, 3)
    np.testing.assert_allclose(layer["batch_mean"][1][0], values.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer["batch_variance"][1][0], values.var(axis=0), rtol=1e-3)


@pytest.mark.parametrize("policy", ["mixed_float16", "float16"])
def test_reduced_precision_policies_log_float32_statistics(keras, tmp_path, policy):
    keras.mixed_precision.set_global_policy(policy)
    x, y = _data((4, 4, 2), n=16)
    inp = keras.Input((4, 4, 2))
    h = keras.layers.BatchNormalization(name="bn")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, dtype="float32")(keras.layers.Flatten()(h)))
    stats = _fit(model, x, y, tmp_path, epochs=2)["bn"]
    assert np.isfinite(stats["batch_mean"][1]).all()
    np.testing.assert_allclose(
        stats["batch_mean"][1][0],
        x.astype("float16").astype("float32").mean(axis=(0, 1, 2)),
        rtol=2e-3,
    )


def test_model_without_batchnorm_warns_once_and_trains(keras, tmp_path):
    x, y = _data((3,), n=8)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[BatchNormCallback(str(tmp_path))])
    ours = [w for w in caught if issubclass(w.category, NoBatchNormWarning)]
    assert len(ours) == 1 and "no BatchNormalization layer" in str(ours[0].message)
    assert len(history.history["loss"]) == 2
    assert read_stats(str(tmp_path)) == {}


def test_unwritable_log_dir_fails_before_training(keras, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the log directory should go")
    x, y = _data((3,), n=8)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    with pytest.raises(PermissionError, match="cannot write event files"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[BatchNormCallback(str(blocker / "logs"))])
    assert int(model.optimizer.iterations.numpy()) == 0


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="log_every_n_steps"):
        BatchNormCallback("x", log_every_n_steps=0)
    with pytest.raises(ValueError, match="channel_dtype"):
        BatchNormCallback("x", channel_dtype="int8")


def test_refit_logs_again_and_leaves_layers_unwrapped(keras, tmp_path):
    x, y = _data((3,), n=8)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    for _ in range(2):
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[BatchNormCallback(str(tmp_path), log_every_n_steps=1)],
        )
    assert "_moments" not in model.get_layer("bn").__dict__
    steps, bm = read_stats(str(tmp_path))["train"]["bn"]["batch_mean"]
    np.testing.assert_array_equal(steps, [1, 2, 3, 4])
    assert not np.isnan(bm).any()


def test_layer_filter_and_snapshot_budget(keras, tmp_path):
    from tb_bn_plugin.reading.load import load_runs
    from tb_bn_plugin.reading.provider import open_logdir

    x, y = _data((16,), n=8)
    inp = keras.Input((16,))
    h = keras.layers.BatchNormalization(name="keep_me")(inp)
    h = keras.layers.BatchNormalization(name="skip_me")(h)
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    model.compile("sgd", "mse")
    # A budget too small for per-channel data at every step: snapshots every k-th log + epoch ends.
    model.fit(
        x,
        y,
        batch_size=1,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[
            BatchNormCallback(
                str(tmp_path), log_every_n_steps=1, layers=["keep*"], max_bytes_per_log=440
            )
        ],
    )
    run = load_runs(open_logdir(str(tmp_path)))["train"]
    assert list(run.layers) == ["keep_me"]
    layer = run.layers["keep_me"]
    np.testing.assert_array_equal(layer.steps, np.arange(1, 17))
    assert 2 <= len(layer.channel_steps) < 16
    assert layer.channel_steps[0] == 1 and layer.channel_steps[-1] == 16  # first and final state
    gaps = np.diff(layer.channel_steps)
    assert (
        len(set(gaps[:-1].tolist())) == 1 and gaps[-1] <= gaps[0]
    )  # a steady cadence within budget
    np.testing.assert_array_equal(layer.info["full"], np.isin(layer.steps, layer.channel_steps))


def test_run_graph_holds_training_and_inference_steps_of_each_bn(keras, tmp_path):
    from tb_bn_plugin import analyze_graph
    from tb_bn_plugin.reading.provider import open_logdir

    x, y = _data((6, 6, 3), n=16)
    inp = keras.Input((6, 6, 3))
    h = keras.layers.BatchNormalization(name="bn_a")(keras.layers.Conv2D(4, 3)(inp))
    h = keras.layers.BatchNormalization(name="bn_b")(keras.layers.Conv2D(4, 3)(h))
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    _fit(model, x, y, tmp_path, epochs=1)
    source = open_logdir(str(tmp_path))
    graph = read_run_graph(source.provider, source.ctx, source.experiment_id, "train")
    sites = analyze_graph(graph)
    assert len(sites) == 2
    assert all(
        s.kind == "separate_functions" and s.training_path and s.inference_path for s in sites
    )
    assert all(s.updates_wired and s.momentum == pytest.approx(0.99) for s in sites)
