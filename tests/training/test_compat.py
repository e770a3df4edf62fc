"""The Keras-flavour seam: every adapter implements the protocol; the Keras 3 one against numpy.

The tf-keras adapter runs end to end in ``test_legacy_keras.py`` (a process with
``TF_USE_LEGACY_KERAS=1``), which also checks ``flavour_of`` and the callback base there.
"""

from __future__ import annotations

import inspect

import numpy as np
import tensorflow as tf

from tb_bn_plugin.training.compat import all_flavours, flavour_of
from tb_bn_plugin.training.compat.base import InstalledCapture, KerasFlavour
from tb_bn_plugin.training.compat.bound_keras import Callback, bound_keras
from tb_bn_plugin.training.compat.keras3 import KERAS3
from tb_bn_plugin.training.compat.tf_keras import TF_KERAS


def _protocol_members() -> set[str]:
    methods = {
        name
        for name, value in vars(KerasFlavour).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }
    return methods | set(KerasFlavour.__annotations__)


def test_every_adapter_implements_every_protocol_member_with_its_signature():
    members = _protocol_members()
    assert {"install_capture", "batch_moments", "stateless", "supports_model_scope"} <= members
    names = {type(f).__name__ for f in all_flavours()}
    assert names == {"Keras3", "TfKeras", "Keras3Jax", "Keras3Torch"}
    for flavour in all_flavours():
        missing = sorted(m for m in members if not hasattr(flavour, m))
        assert not missing, f"{type(flavour).__name__} lacks {missing}"
        for name in members - set(KerasFlavour.__annotations__):
            expected = list(inspect.signature(getattr(KerasFlavour, name)).parameters)[1:]
            got = list(inspect.signature(getattr(flavour, name)).parameters)
            assert got == expected, (type(flavour).__name__, name, got, expected)


def test_flavour_of_picks_keras3_for_keras3_objects(keras):
    bn = keras.layers.BatchNormalization()
    dense = keras.layers.Dense(2)
    model = keras.Sequential([keras.Input((3,)), dense, bn])
    for obj in (model, bn, dense):
        assert flavour_of(obj) is KERAS3 and KERAS3.owns(obj) and not TF_KERAS.owns(obj)
    assert flavour_of(object()) is KERAS3  # the default
    assert not KERAS3.owns(object())
    assert KERAS3.is_batchnorm(bn) and not KERAS3.is_batchnorm(dense)
    assert not TF_KERAS.is_batchnorm(bn)
    assert list(KERAS3.child_layers(model))[-2:] == [dense, bn]
    assert KERAS3.supports_model_scope and not TF_KERAS.supports_model_scope


def test_keras3_layer_facts(keras):
    channels_first = keras.layers.BatchNormalization(axis=1)
    renorm = keras.layers.BatchNormalization(renorm=True)
    keras.Sequential([keras.Input((3, 4)), channels_first, renorm])
    assert KERAS3.channel_axis(channels_first) == 1
    assert KERAS3.channel_axis(renorm) == -1
    assert KERAS3.normalises_with_batch_moments(channels_first)
    assert not KERAS3.normalises_with_batch_moments(renorm)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    assert KERAS3.explicit_strategy(model) is None
    assert KERAS3.compiled_loss(model) is None and KERAS3.compiled_metrics(model) is None
    KERAS3.check_probe([], 3)  # any probe size


def test_keras3_batch_moments_match_numpy(keras):
    rng = np.random.RandomState(0)
    x = (rng.randn(6, 4, 3) * [1.0, 2.0, 5.0] + [0.0, 3.0, -1.0]).astype("float32")
    mask = rng.rand(6, 4) > 0.3
    bn = keras.layers.BatchNormalization()
    bn.build((None, 4, 3))
    mean, variance = KERAS3.batch_moments(bn, tf.constant(x), None)
    assert mean.dtype == tf.float32 and mean.shape == (3,)
    flat = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(variance, flat.var(0), rtol=1e-5)
    mean, variance = KERAS3.batch_moments(bn, tf.constant(x), tf.constant(mask))
    kept = x[mask].astype(np.float64)
    np.testing.assert_allclose(mean, kept.mean(0), rtol=1e-5)
    np.testing.assert_allclose(variance, kept.var(0), rtol=1e-4)


def test_keras3_capture_wrapper_records_what_the_layer_normalises_with(keras):
    rng = np.random.RandomState(1)
    x = (rng.randn(8, 2) * [3.0, 0.5] + [1.0, 2.0]).astype("float32")
    bn = keras.layers.BatchNormalization()
    bn.build((None, 2))
    seen: dict = {}

    def record(mean, variance, count, masked):
        seen.update(mean=mean, variance=variance, count=count, masked=masked)

    installed = KERAS3.install_capture(bn, record, tf.Variable(True))
    assert isinstance(installed, InstalledCapture)
    assert installed.attribute == "_moments" and not installed.gated
    assert "_moments" in bn.__dict__

    @tf.function
    def step(batch):
        out = bn(batch, training=True)
        return out, seen["mean"], seen["variance"], seen["count"]

    out, mean, variance, count = step(tf.constant(x))
    assert seen["masked"] is False
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-5)
    np.testing.assert_allclose(variance, x.astype(np.float64).var(0), rtol=1e-5)
    assert float(count) == 8.0
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + bn.epsilon)  # gamma 1, beta 0
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    installed.uninstall()
    assert "_moments" not in bn.__dict__


def test_keras3_stateless_scope_keeps_the_moving_statistics(keras):
    x = np.random.RandomState(2).randn(8, 2).astype("float32") + 5.0
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((2,)), bn])

    @tf.function
    def stateless_pass(batch):
        with KERAS3.stateless(model):
            return bn(batch, training=True)

    before = bn.moving_mean.numpy().copy()
    stateless_pass(tf.constant(x))
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)
    bn(tf.constant(x), training=True)  # outside the scope the update happens
    assert not np.array_equal(bn.moving_mean.numpy(), before)


def test_the_callback_base_is_the_callback_of_the_bound_keras():
    from tb_bn_plugin import BatchNormCallback, PreciseStatsMonitor

    assert Callback is tf.keras.callbacks.Callback
    assert bound_keras().callbacks.Callback is tf.keras.callbacks.Callback
    assert issubclass(BatchNormCallback, Callback) and issubclass(PreciseStatsMonitor, Callback)
