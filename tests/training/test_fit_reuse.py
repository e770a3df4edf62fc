"""Fitting one model again and again with a new callback per fit: what is traced once,
what the next plain fit runs, no retracing warnings, no models kept alive, nothing lost
to a kill."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest

from tb_bn_plugin import BatchNormCallback, read_gap, read_stats


def _counting_model(keras):
    """A model whose class counts how often ``train_step`` is traced (Python runs only then)."""

    class CountingModel(keras.Model):
        traces = 0

        def train_step(self, data):
            type(self).traces += 1
            return super().train_step(data)

    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3)(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dropout(0.2)(h)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    model = CountingModel(inp, out)
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _data(n=64):
    rng = np.random.RandomState(0)
    return rng.randn(n, 8, 8, 3).astype("float32"), rng.randint(0, 2, n)


def _fit(model, callbacks):
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=callbacks)


class _Retracings(logging.Handler):
    """TensorFlow's "triggered tf.function retracing" warnings (logged to ``tensorflow``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "triggered tf.function retracing" in record.getMessage():
            self.messages.append(record.getMessage())


@pytest.fixture
def retracings():
    import tensorflow as tf

    handler = _Retracings()
    tf.get_logger().addHandler(handler)
    yield handler
    tf.get_logger().removeHandler(handler)


def test_handler_sees_retracing_warnings(retracings):
    """The capture below is live: a function re-created in a loop is reported."""
    import tensorflow as tf

    for i in range(6):
        tf.function(lambda t: t + 1, autograph=False)(tf.constant(i))
    assert retracings.messages


def test_ten_fits_with_new_callbacks_print_no_retracing_warning(keras, tmp_path, retracings):
    model = _counting_model(keras)
    for fit in range(10):
        _fit(model, [BatchNormCallback(str(tmp_path / str(fit)))])
    assert retracings.messages == []
    # Every fit logged its statistics and its gap.
    for fit in range(10):
        run = str(tmp_path / str(fit))
        assert list(read_stats(run)["train"]["bn"]["moving_mean"][0]) == [4 * (fit + 1)]
        gap = read_gap(run)["train"]
        # At the end of every fit; after the first step only in the first fit, the one loss
        # taken before the model learnt (later fits would only add an evaluation per fit).
        assert list(gap.steps) == ([1] if fit == 0 else []) + [4 * (fit + 1)]
        assert np.isfinite(gap.train_loss).all() and np.isfinite(gap.compound["bn"]).all()


def test_new_models_fitted_one_after_another_print_no_retracing_warning(
    keras, tmp_path, retracings
):
    """Cross-validation folds, tuner trials: a new model per fit traces its own snapshot and
    writer functions, and TensorFlow's frequent-retracing detector must not count them."""
    for fold in range(7):
        _fit(_counting_model(keras), [BatchNormCallback(str(tmp_path / str(fold)))])
    assert retracings.messages == []
    for fold in range(7):
        assert list(read_stats(str(tmp_path / str(fold)))["train"]["bn"]["moving_mean"][0]) == [4]


def test_instrumented_step_traced_once_per_model_and_plain_fits_not_retraced(keras, tmp_path):
    model = _counting_model(keras)
    cls = type(model)
    _fit(model, [BatchNormCallback(str(tmp_path / "a"))])
    traced_with_callback = cls.traces
    _fit(model, [BatchNormCallback(str(tmp_path / "b"))])
    assert cls.traces == traced_with_callback  # the second fit reused the instrumented step

    _fit(model, [])  # the model's own step, traced for the first time
    bare = model.train_function
    traced = cls.traces
    assert traced == traced_with_callback + 1
    _fit(model, [BatchNormCallback(str(tmp_path / "c"))])
    assert model.train_function is bare  # given back after the fit
    _fit(model, [])
    assert cls.traces == traced  # neither fit traced anything
    assert list(read_stats(str(tmp_path / "c"))["train"]["bn"]["moving_mean"][0]) == [16]


def test_recompiled_model_is_instrumented_anew(keras, tmp_path):
    """``compile`` drops what was traced with the old optimizer; the callback follows."""
    model = _counting_model(keras)
    _fit(model, [BatchNormCallback(str(tmp_path / "a"))])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _fit(model, [BatchNormCallback(str(tmp_path / "b"))])
    # The new optimizer counts from 0 again, and its steps are captured.
    steps, batch_mean = read_stats(str(tmp_path / "b"))["train"]["bn"]["batch_mean"]
    assert list(steps) == [4] and np.isfinite(batch_mean).all()


def test_cached_functions_do_not_keep_the_model_alive(keras, tmp_path):
    model = _counting_model(keras)
    for fit in range(2):
        _fit(model, [BatchNormCallback(str(tmp_path / str(fit)))])
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


# A fit killed with SIGKILL at its 150th step (a callback after BatchNormCallback kills the
# process in on_train_batch_begin, after the callback logged the state before that step).
_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    import tensorflow as tf
    from tb_bn_plugin import BatchNormCallback

    keras = tf.keras

    class Kill(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 150:
                os.kill(os.getpid(), signal.SIGKILL)

    rng = np.random.RandomState(0)
    x = rng.randn(800, 4, 4, 2).astype("float32")
    y = rng.randn(800, 1).astype("float32")
    inp = keras.Input((4, 4, 2))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(3, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    model.compile("sgd", "mse")
    callback = BatchNormCallback(sys.argv[1], log_every_n_steps=10)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[callback, Kill()])
    """
)


def test_steps_logged_before_a_sigkill_are_on_disk(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    layer = read_stats(str(tmp_path))["train"]["bn"]
    expected = list(range(10, 151, 10))
    for stat in ("batch_mean", "moving_mean", "moving_variance"):
        steps, values = layer[stat]
        assert list(steps) == expected
        assert np.isfinite(values).all()
