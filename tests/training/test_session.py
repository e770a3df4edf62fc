"""LoggingSession, what the callback and the logger share: discovery, capture, writer, cadence."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from tb_bn_plugin import metadata, records
from tb_bn_plugin.training.capture import BatchNormRef, UnsupportedLayerError
from tb_bn_plugin.training.session import DEFAULT_MAX_BYTES_PER_LOG, LoggingSession


def _model(keras):
    inp = keras.Input((3,))
    h = keras.layers.BatchNormalization(name="keep_bn", momentum=0.5)(inp)
    h = keras.layers.Dense(4, name="hidden")(h)
    h = keras.layers.BatchNormalization(name="other_bn")(h)
    return keras.Model(inp, keras.layers.Dense(1)(h))


def _logged(run_dir: str) -> dict[str, dict[int, np.ndarray]]:
    out: dict[str, dict[int, np.ndarray]] = {}
    for path in tf.io.gfile.glob(os.path.join(run_dir, "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return out


def test_a_session_logs_the_selected_layers_at_its_cadence(keras, tmp_path):
    rng = np.random.RandomState(0)
    x = (rng.randn(32, 3) * [1.0, 4.0, 0.5] + [2.0, 0.0, -3.0]).astype("float32")
    y = rng.randn(32, 1).astype("float32")
    model = _model(keras)
    opt = keras.optimizers.SGD(0.05)
    run_dir = str(tmp_path / "train")
    session = LoggingSession(
        run_dir, tf.distribute.get_strategy(), ["keep*"], "float16", max_bytes_per_log=300
    )
    refs = session.select_layers(model)
    assert [r.path for r in refs] == ["keep_bn"]
    assert session.writer is None and session.capture is None
    capture = session.start_capture(refs, opt.iterations)
    assert session.capture is capture and session.writer is not None
    interval = records.snapshot_interval(capture.configs, np.dtype("float16"), 300)
    assert session.cadence.interval == interval > 1

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))

    full = []
    for step in range(1, 7):
        i = (step - 1) % 4 * 8
        train_step(x[i : i + 8], y[i : i + 8])
        full.append(session.log_step(step, step, force_snapshot=step == 6))
        assert session.last_logged == step
    # The first logged step snapshots, then every interval-th, and the forced last one.
    assert full == [k % interval == 0 or k == 5 for k in range(6)]
    assert session.last_snapshot == 6
    session.close()
    assert session.capture is None and session.writer is None
    assert "_moments" not in model.get_layer("keep_bn").__dict__

    logged = _logged(run_dir)
    summary_tag = metadata.layer_tag("keep_bn", metadata.SUFFIX_SUMMARY)
    channels_tag = metadata.layer_tag("keep_bn", metadata.SUFFIX_CHANNELS)
    assert set(logged) == {summary_tag, channels_tag}
    assert sorted(logged[summary_tag]) == [1, 2, 3, 4, 5, 6]
    assert sorted(logged[channels_tag]) == [k + 1 for k, f in enumerate(full) if f]
    for step, channels in logged[channels_tag].items():
        assert channels.dtype == np.float16
        i = (step - 1) % 4 * 8
        np.testing.assert_allclose(channels[0], x[i : i + 8].mean(0), rtol=2e-3, atol=2e-3)


def test_an_unsupported_layer_fails_before_the_writer_opens(keras, tmp_path):
    run_dir = tmp_path / "train"
    session = LoggingSession(str(run_dir), tf.distribute.get_strategy())
    unbuilt = keras.layers.BatchNormalization(name="unbuilt")
    with pytest.raises(UnsupportedLayerError):
        session.start_capture([BatchNormRef("unbuilt", unbuilt)], tf.Variable(0))
    assert session.writer is None and not run_dir.exists()


def test_an_unwritable_run_dir_fails_before_the_wrappers_go_in(keras, tmp_path):
    model = _model(keras)
    blocker = tmp_path / "file"
    blocker.write_text("")
    session = LoggingSession(str(blocker / "train"), tf.distribute.get_strategy())
    refs = session.select_layers(model)
    with pytest.raises(PermissionError):
        session.start_capture(refs, tf.Variable(0))
    assert session.capture is None
    assert not any("_moments" in r.layer.__dict__ for r in refs)
    assert session.max_bytes_per_log == DEFAULT_MAX_BYTES_PER_LOG
