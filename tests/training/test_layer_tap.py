"""BatchNormTap: which mode each BN layer runs in per probe pass, and what it records; vs numpy."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tb_bn_plugin.training.capture import find_batchnorm_layers
from tb_bn_plugin.training.compat.keras3 import KERAS3
from tb_bn_plugin.training.layer_tap import ATTRIBUTION, INFERENCE, TRAIN, BatchNormTap, ProbePass

EPS = 1e-3


def _bn(x, mean, variance):
    return (x - mean) / np.sqrt(variance + EPS)


def test_passes_switch_the_layers_and_record_their_outputs(keras):
    rng = np.random.RandomState(0)
    x = (rng.randn(10, 3) * [1.0, 2.0, 0.5] + [1.0, -1.0, 2.0]).astype("float32")
    kernel = rng.randn(3, 2).astype("float32")
    inp = keras.Input((3,))
    first = keras.layers.BatchNormalization(name="first", epsilon=EPS)
    dense = keras.layers.Dense(2, use_bias=False, name="mix")
    second = keras.layers.BatchNormalization(name="second", epsilon=EPS)
    model = keras.Model(inp, second(dense(first(inp))))
    dense.set_weights([kernel])
    moving = {
        "first": (np.array([0.5, -0.5, 1.0]), np.array([2.0, 3.0, 0.5])),
        "second": (np.array([0.2, -0.1]), np.array([1.5, 0.7])),
    }
    for layer in (first, second):
        layer.moving_mean.assign(moving[layer.name][0])
        layer.moving_variance.assign(moving[layer.name][1])
    refs = find_batchnorm_layers(model)
    tap = BatchNormTap(refs, refs[:1])  # both switch modes, only "first" is recorded

    def passes(batch):
        recorded = {}
        for kind, index in ((INFERENCE, None), (TRAIN, None), (ATTRIBUTION, tf.constant(0))):
            probe_pass = ProbePass(kind, index)
            with tap.active(probe_pass), KERAS3.stateless(model):
                out = model(batch, training=False)  # the tap decides the BN layers' modes
            recorded[kind] = (out, probe_pass.outputs)
        train_first = recorded[TRAIN][1][0]
        return {
            "inference": recorded[INFERENCE][0],
            "train": recorded[TRAIN][0],
            "attribution": recorded[ATTRIBUTION][0],
            "first_inference": recorded[INFERENCE][1][0].output,
            "first_train": train_first.output,
            "first_local_inference": train_first.inference_output,
            "first_mean": train_first.moments[0],
            "first_variance": train_first.moments[1],
            "slots": tf.constant(sorted(recorded[TRAIN][1])),
        }

    with tap.installed():
        assert all("call" in r.layer.__dict__ for r in refs)
        fn = tf.function(passes, autograph=False).get_concrete_function(tf.constant(x))
    assert not any("call" in r.layer.__dict__ for r in refs)
    got = {k: v.numpy() for k, v in fn(tf.constant(x)).items()}

    x64 = x.astype(np.float64)
    first_train = _bn(x64, x64.mean(0), x64.var(0))
    first_inference = _bn(x64, *moving["first"])

    def second_train(h):
        return _bn(h, h.mean(0), h.var(0))

    np.testing.assert_array_equal(got["slots"], [0])
    np.testing.assert_allclose(got["first_train"], first_train, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["first_inference"], first_inference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["first_local_inference"], first_inference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["first_mean"], x64.mean(0), rtol=1e-5)
    np.testing.assert_allclose(got["first_variance"], x64.var(0), rtol=1e-5)
    np.testing.assert_allclose(
        got["inference"], _bn(first_inference @ kernel, *moving["second"]), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        got["train"], second_train(first_train @ kernel), rtol=1e-4, atol=1e-4
    )
    # Attribution of slot 0: "first" in inference mode, the rest in training mode.
    np.testing.assert_allclose(
        got["attribution"], second_train(first_inference @ kernel), rtol=1e-4, atol=1e-4
    )
    # The stateless scope kept the moving statistics.
    for layer in (first, second):
        np.testing.assert_allclose(layer.moving_mean.numpy(), moving[layer.name][0], rtol=1e-7)
        np.testing.assert_allclose(layer.moving_variance.numpy(), moving[layer.name][1], rtol=1e-7)
