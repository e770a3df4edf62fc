"""Layer discovery, layer facts and the batch-statistics capture, on real Keras models vs numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from tb_bn_plugin import metadata
from tb_bn_plugin.training.capture import (
    BatchNormRef,
    StatsCapture,
    UnsupportedLayerError,
    find_batchnorm_layers,
    layer_config,
    require_built,
)


def _nested_model(keras):
    """Top-level BN, a nested Sequential with its own ``bn``, a custom layer holding a BN, a
    layer shared by two branches."""

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(4, name="dense")
            self.inner_bn = keras.layers.BatchNormalization(name="inner_bn")

        def call(self, inputs, training=None):
            return self.inner_bn(self.dense(inputs), training=training)

    inp = keras.Input((3,))
    encoder = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(name="bn")],
        name="encoder",
    )
    shared = keras.layers.BatchNormalization(name="shared")
    h = encoder(inp)
    h = Block(name="block")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Add()([shared(h), shared(h * 2.0)])
    return keras.Model(inp, keras.layers.Dense(1, name="head")(h))


def test_find_batchnorm_layers_walks_nested_models_in_order(keras):
    model = _nested_model(keras)
    refs = find_batchnorm_layers(model)
    assert [r.path for r in refs] == ["encoder/bn", "block/inner_bn", "bn", "shared"]
    assert refs[0].layer is model.get_layer("encoder").get_layer("bn")
    assert refs[1].layer is model.get_layer("block").inner_bn
    assert all(r.built for r in refs) and [r.channels for r in refs] == [4, 4, 4, 4]
    # Patterns are globs over the whole path.
    assert [r.path for r in find_batchnorm_layers(model, ["encoder/*"])] == ["encoder/bn"]
    assert [r.path for r in find_batchnorm_layers(model, ["*bn"])] == [
        "encoder/bn",
        "block/inner_bn",
        "bn",
    ]
    assert [r.path for r in find_batchnorm_layers(model, ["bn", "sh*"])] == ["bn", "shared"]
    assert find_batchnorm_layers(model, []) == []
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert find_batchnorm_layers(plain) == []


def test_layer_config_facts_and_axis_in_input_coordinates(keras):
    inp = keras.Input((3, 5, 6))
    first = keras.layers.BatchNormalization(
        axis=1, momentum=0.9, epsilon=1e-4, center=False, name="channels_first"
    )
    last = keras.layers.BatchNormalization(scale=False, name="channels_last")
    keras.Model(inp, last(first(inp)))
    c_first = layer_config(BatchNormRef("channels_first", first), 0)
    assert (c_first.path, c_first.index, c_first.channels, c_first.axis, c_first.rank) == (
        "channels_first",
        0,
        3,
        1,
        4,
    )
    assert c_first.momentum == pytest.approx(0.9) and c_first.epsilon == pytest.approx(1e-4)
    assert not c_first.center and c_first.scale and not c_first.renorm
    assert not c_first.synchronized
    c_last = layer_config(BatchNormRef("channels_last", last), 7)
    # axis=-1 on a rank-4 input counts from 0.
    assert (c_last.index, c_last.channels, c_last.axis) == (7, 6, 3)
    assert c_last.center and not c_last.scale
    assert c_last.stats() == (
        metadata.BATCH_MEAN,
        metadata.BATCH_VARIANCE,
        metadata.MOVING_MEAN,
        metadata.MOVING_VARIANCE,
        metadata.BETA,
    )


def test_unbuilt_layers_are_refused(keras):
    bn = keras.layers.BatchNormalization(name="later")
    ref = BatchNormRef("later", bn)
    assert not ref.built
    with pytest.raises(UnsupportedLayerError, match="not built yet"):
        layer_config(ref, 0)
    with pytest.raises(UnsupportedLayerError, match=r"\['later'\] are not built.*before fitting"):
        require_built([ref], "fitting")
    require_built([], "fitting")  # nothing to refuse
    assert issubclass(UnsupportedLayerError, ValueError)
    with pytest.raises(UnsupportedLayerError):
        StatsCapture([ref], None, tf.distribute.get_strategy())


def test_captured_statistics_are_the_batch_moments_of_a_real_fit(keras):
    """The first BN sees the raw batch; the second a masked sequence (count = unmasked steps)."""
    rng = np.random.RandomState(0)
    x = (rng.randn(24, 3) * [1.0, 3.0, 0.5] + [2.0, -1.0, 10.0]).astype("float32")
    tokens = rng.randint(1, 9, size=(24, 5))
    tokens[:, 3:][rng.rand(24, 2) < 0.5] = 0  # padded tail: masked positions
    y = rng.randn(24, 1).astype("float32")

    dense_in = keras.Input((3,), name="dense_in")
    token_in = keras.Input((5,), dtype="int32", name="token_in")
    bn_dense = keras.layers.BatchNormalization(name="bn_dense", momentum=0.5)
    embedding = keras.layers.Embedding(9, 2, mask_zero=True, name="embed")
    bn_seq = keras.layers.BatchNormalization(name="bn_seq", momentum=0.5)
    h_seq = keras.layers.GlobalAveragePooling1D()(bn_seq(embedding(token_in)))
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([bn_dense(dense_in), h_seq]))
    model = keras.Model([dense_in, token_in], out)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    model.fit([x, tokens], y, batch_size=8, epochs=1, verbose=0, shuffle=False)

    refs = find_batchnorm_layers(model)
    capture = StatsCapture(refs, model.optimizer.iterations, model.distribute_strategy)
    capture.install()
    model.make_train_function(force=True)
    assert not capture.gated  # Keras 3's wrapper adds no computation
    moving_before = bn_dense.moving_mean.numpy().copy()
    # What bn_seq sees: the embeddings before the step updates them.
    emb = embedding.embeddings.numpy().astype(np.float64)[tokens[8:16]]  # (8, 5, 2)
    model.train_on_batch([x[8:16], tokens[8:16]], y[8:16])
    steps_done = int(model.optimizer.iterations.numpy())
    assert steps_done == 4
    snaps = {snap.config.path: snap for snap in capture.snapshot(steps_done)}
    dense_snap, seq_snap = snaps["bn_dense"], snaps["bn_seq"]

    batch = x[8:16].astype(np.float64)
    assert dense_snap.training
    assert dense_snap.count == 8 and dense_snap.momentum == pytest.approx(0.5)
    np.testing.assert_allclose(dense_snap.values["batch_mean"], batch.mean(0), rtol=1e-5)
    np.testing.assert_allclose(dense_snap.values["batch_variance"], batch.var(0), rtol=1e-5)
    np.testing.assert_allclose(
        dense_snap.values["moving_mean"], 0.5 * moving_before + 0.5 * batch.mean(0), rtol=1e-5
    )
    np.testing.assert_array_equal(dense_snap.values["moving_variance"], bn_dense.moving_variance)
    np.testing.assert_array_equal(dense_snap.values["gamma"], bn_dense.gamma)

    keep = tokens[8:16] != 0
    values = emb[keep]  # (unmasked positions, 2)
    assert seq_snap.count == keep.sum() < 8 * 5
    np.testing.assert_allclose(seq_snap.values["batch_mean"], values.mean(0), rtol=1e-5)
    np.testing.assert_allclose(seq_snap.values["batch_variance"], values.var(0), rtol=1e-4)

    # Asked about a later step the layers did not train in: no batch statistics, no count.
    later = {snap.config.path: snap for snap in capture.snapshot(steps_done + 1)}["bn_dense"]
    assert not later.training and math.isnan(later.count)
    assert np.isnan(later.values["batch_mean"]).all()
    np.testing.assert_array_equal(later.values["moving_mean"], dense_snap.values["moving_mean"])

    capture.uninstall()
    assert "_moments" not in bn_dense.__dict__ and "_moments" not in bn_seq.__dict__


def test_paused_capture_leaves_the_captured_statistics(keras):
    rng = np.random.RandomState(1)
    x = rng.randn(8, 2).astype("float32")
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Sequential([keras.Input((2,)), bn])
    clock = tf.Variable(0, dtype=tf.int64)
    (ref,) = find_batchnorm_layers(model)
    capture = StatsCapture([ref], clock, tf.distribute.get_strategy())
    capture.install()

    @tf.function
    def step(batch):
        model(batch, training=True)
        clock.assign_add(1)

    with capture.paused():
        paused_step = tf.function(lambda batch: model(batch, training=True))
        paused_step(x * 100.0)  # traced while paused: writes nothing
    step(x)
    (snap,) = capture.snapshot(1)
    np.testing.assert_allclose(snap.values["batch_mean"], x.astype(np.float64).mean(0), rtol=1e-5)
    paused_step(x * 100.0)
    (again,) = capture.snapshot(1)
    np.testing.assert_array_equal(again.values["batch_mean"], snap.values["batch_mean"])
    capture.uninstall()
