"""The probe batch: from the user's arrays, or stashed from the first batch of a real fit."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tb_bn_plugin.training.probe_batch import FirstBatchStash, ProbeBatch, probe_batch_from_data


def test_probe_batch_from_data_keeps_the_first_samples():
    rng = np.random.RandomState(0)
    x, y, w = rng.randn(10, 3), rng.randn(10, 1), rng.rand(10)
    batch = probe_batch_from_data((x, y, w), 4)
    assert isinstance(batch, ProbeBatch) and batch.size == 4
    np.testing.assert_array_equal(batch.x.numpy(), x[:4])
    np.testing.assert_array_equal(batch.y.numpy(), y[:4])
    np.testing.assert_array_equal(batch.sample_weight.numpy(), w[:4])
    only_x = probe_batch_from_data([x], 100)
    assert only_x.size == 10 and only_x.y is None and only_x.sample_weight is None
    nested = probe_batch_from_data(({"a": x, "b": x[:, :1]}, y), 3)
    assert nested.size == 3 and set(nested.x) == {"a", "b"}
    np.testing.assert_array_equal(nested.x["b"].numpy(), x[:3, :1])


@pytest.mark.parametrize(
    "data, error",
    [
        (np.zeros((4, 2)), TypeError),  # not a tuple
        ((np.zeros((4, 2)), np.zeros((4, 1)), None, None), TypeError),  # too many parts
        ((tf.data.Dataset.from_tensor_slices(np.zeros((4, 2))),), TypeError),
        ((np.zeros((4, 2)), np.zeros((3, 1))), ValueError),  # unequal sample counts
        ((np.float32(1.0),), TypeError),  # no length
        ((tf.constant(1.0),), ValueError),  # no batch dimension
        ((np.zeros((0, 2)),), ValueError),  # empty
    ],
)
def test_probe_batch_from_data_refuses(data, error):
    with pytest.raises(error):
        probe_batch_from_data(data, 8)


def _model(keras):
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    return model


def test_stash_copies_the_first_training_batch_once(keras):
    rng = np.random.RandomState(1)
    x, y = rng.randn(20, 3).astype("float32"), rng.randn(20, 1).astype("float32")
    w = rng.rand(20).astype("float32")
    model = _model(keras)
    stash = FirstBatchStash(model, probe_size=5)
    assert stash.unsupported is None and stash.probe() is None
    stash.install()
    assert "train_step" in model.__dict__
    model.make_train_function(force=True)
    model.fit(x, y, sample_weight=w, batch_size=8, epochs=2, shuffle=False, verbose=0)
    batch = stash.probe()
    assert batch.size == 5  # probe_size of the first batch of 8, not of a later one
    np.testing.assert_array_equal(batch.x.numpy(), x[:5])
    np.testing.assert_array_equal(batch.y.numpy(), y[:5])
    np.testing.assert_array_equal(batch.sample_weight.numpy(), w[:5])
    stash.uninstall()
    assert "train_step" not in model.__dict__

    # A first batch smaller than probe_size is stashed whole.
    small = FirstBatchStash(_model(keras), probe_size=64)
    small.install()
    small._model.make_train_function(force=True)
    small._model.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    got = small.probe()
    assert got.size == 6 and got.sample_weight is None
    np.testing.assert_array_equal(got.x.numpy(), x[:6])


def test_stash_refuses_distributed_models(keras):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _model(keras)
    stash = FirstBatchStash(model, probe_size=4)
    assert stash.unsupported == "the model trains under a tf.distribute strategy"
    stash.install()  # does nothing
    assert "train_step" not in model.__dict__ and stash.probe() is None
