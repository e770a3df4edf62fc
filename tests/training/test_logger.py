"""BatchNormLogger in real tf.GradientTape loops: numbers against numpy, read with read_stats."""

from __future__ import annotations

import numpy as np
import pytest

from tb_bn_plugin import read_stats


def _data(n=16, seed=0):
    rng = np.random.RandomState(seed)
    x = (rng.randn(n, 3) * [1.0, 2.0, 0.5] + [1.0, -2.0, 3.0]).astype("float32")
    y = rng.randn(n, 1).astype("float32")
    return x, y


def _model(keras):
    inp = keras.Input((3,))
    h = keras.layers.BatchNormalization(name="bn", momentum=0.8)(inp)
    return keras.Model(inp, keras.layers.Dense(1)(h))


def test_gradient_tape_loop_with_optimizer_clock(keras, tmp_path):
    import tensorflow as tf

    from tb_bn_plugin.training.logger import BatchNormLogger

    x, y = _data()
    model = _model(keras)
    opt = keras.optimizers.SGD(0.1)
    with BatchNormLogger(model, str(tmp_path), log_every_n_steps=1, optimizer=opt) as logger:

        @tf.function
        def train_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))

        for _epoch in range(2):
            for i in (0, 8):
                train_step(x[i : i + 8], y[i : i + 8])
                assert logger.log()
    assert "_moments" not in model.get_layer("bn").__dict__  # closed: wrappers removed

    layer = read_stats(str(tmp_path))["train"]["bn"]
    steps, bm = layer["batch_mean"]
    np.testing.assert_array_equal(steps, [1, 2, 3, 4])
    expected = np.array([x[i : i + 8].mean(axis=0) for i in (0, 8, 0, 8)])
    np.testing.assert_allclose(bm, expected, rtol=1e-5)
    np.testing.assert_allclose(
        layer["batch_variance"][1],
        np.array([x[i : i + 8].var(axis=0) for i in (0, 8, 0, 8)]),
        rtol=1e-4,
    )
    moving = np.zeros(3)
    for row in expected:
        moving = 0.8 * moving + 0.2 * row
    np.testing.assert_allclose(layer["moving_mean"][1][-1], moving, rtol=1e-5)
    np.testing.assert_array_equal(
        layer["moving_mean"][1][-1], model.get_layer("bn").moving_mean.numpy()
    )


def test_internal_counter_cadence_and_untrained_steps(keras, tmp_path):
    import tensorflow as tf

    from tb_bn_plugin.reading.load import load_runs
    from tb_bn_plugin.reading.provider import open_logdir
    from tb_bn_plugin.training.logger import BatchNormLogger

    x, y = _data(n=8, seed=1)
    model = _model(keras)
    logger = BatchNormLogger(model, str(tmp_path), log_every_n_steps=2)

    @tf.function
    def forward(xb, training):
        return model(xb, training=training)

    written = []
    for step in range(1, 7):
        forward(x * step, training=step != 4)  # step 4 runs in inference mode
        written.append(logger.log(step))
    logger.close()
    assert written == [False, True, False, True, False, True]

    run = load_runs(open_logdir(str(tmp_path)))["train"]
    layer = run.layers["bn"]
    np.testing.assert_array_equal(layer.steps, [2, 4, 6])
    np.testing.assert_array_equal(layer.info["training"], [1, 0, 1])
    np.testing.assert_array_equal(layer.info["count"][[0, 2]], [8, 8])
    stats = read_stats(str(tmp_path))["train"]["bn"]
    bm = stats["batch_mean"][1]
    np.testing.assert_allclose(bm[0], (x * 2).mean(axis=0), rtol=1e-5)
    assert np.isnan(bm[1]).all()
    np.testing.assert_allclose(bm[2], (x * 6).mean(axis=0), rtol=1e-5)


def test_requires_built_model_with_batchnorm(keras, tmp_path):
    from tb_bn_plugin.training.logger import BatchNormLogger

    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no BatchNormalization"):
        BatchNormLogger(plain, str(tmp_path))
    unbuilt = keras.Sequential([keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="not built"):
        BatchNormLogger(unbuilt, str(tmp_path))


def test_unwritable_log_dir_fails_and_leaves_the_model_unwrapped(keras, tmp_path):
    from tb_bn_plugin.training.logger import BatchNormLogger

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the log directory should go")
    model = _model(keras)
    with pytest.raises(PermissionError, match="cannot write event files"):
        BatchNormLogger(model, str(blocker / "logs"))
    assert "_moments" not in vars(model.get_layer("bn"))  # no capture wrapper left behind


def test_jit_is_for_the_jax_backend(keras, tmp_path):
    """On TensorFlow ``jit`` says what to do instead, and the logger keeps working."""
    from tb_bn_plugin.training.logger import BatchNormLogger

    with BatchNormLogger(_model(keras), str(tmp_path)) as logger:
        with pytest.raises(ValueError, match="JAX backend.*call log\\(\\) after each step"):
            logger.jit(lambda state: state)
        assert logger.log()
