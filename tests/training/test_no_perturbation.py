"""The callback must not change training: same weights and moving statistics, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tb_bn_plugin import read_gap

# Runs in a fresh process: op determinism is process-global.
_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    from tb_bn_plugin import BatchNormCallback

    keras = tf.keras
    tf.config.experimental.enable_op_determinism()
    kwargs = json.loads(sys.argv[2])

    def train(with_callback):
        keras.utils.set_random_seed(7)
        rng = np.random.RandomState(0)
        x = (rng.randn(96, 8, 8, 3) * 2 + 1).astype("float32")
        y = rng.randint(0, 3, size=96)
        inp = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(6, 3, padding="same")(inp)
        h = keras.layers.BatchNormalization(momentum=0.9)(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.Dropout(0.3)(h)
        h = keras.layers.Conv2D(6, 3)(h)
        h = keras.layers.BatchNormalization(scale=False)(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inp, keras.layers.Dense(3)(h))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(keras.optimizers.Adam(1e-2), loss, metrics=["accuracy"])

        def callbacks(run):
            if not with_callback:
                return []
            return [BatchNormCallback(os.path.join(sys.argv[1], run), **kwargs)]

        # Full batches only: after a partial last batch Keras traces its train function with
        # a relaxed batch dimension, and the model's own train function, first traced in the
        # third fit when the callback ran the first two, would be a graph of other shapes
        # (other kernels, other rounding) than the one traced in the first fit without it.
        history = model.fit(x, y, batch_size=24, epochs=3, validation_split=0.25, verbose=0,
                            callbacks=callbacks("with"))
        # Fitting again with a new callback reuses what the first one traced; then a fit
        # without the callback runs the model's own train function again.
        again = model.fit(x, y, batch_size=24, epochs=1, verbose=0, callbacks=callbacks("again"))
        plain = model.fit(x, y, batch_size=24, epochs=1, verbose=0)
        state = model.variables + model.optimizer.variables + model.metrics_variables
        histories = [h.history for h in (history, again, plain)]
        return {"state": [np.asarray(v.numpy()).tolist() for v in state], "history": histories}

    print(json.dumps({"without": train(False), "with": train(True)}))
    """
)


GAP_HEAVY = {
    "gap_every_n_steps": 2,
    "gap_attribution": True,
    "gap_scope": "model",
    "probe_size": 16,
}


@pytest.mark.parametrize(
    "kwargs", [{}, {"log_every_n_steps": 1}, GAP_HEAVY], ids=["defaults", "every-step", "gap-heavy"]
)
def test_training_identical_with_and_without_callback(tmp_path, kwargs):
    """Weights, moving statistics, optimizer and metric state and history, bit for bit, over a
    fit with the callback, a second fit with a new one and a third fit without."""
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path), json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    without, with_cb = result["without"], result["with"]
    assert len(without["state"]) == len(with_cb["state"]) > 10
    for a, b in zip(without["state"], with_cb["state"]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert without["history"] == with_cb["history"]
    gap = read_gap(str(tmp_path / "with"))["train"]
    if kwargs is GAP_HEAVY:
        # 72 training samples in batches of 24: epochs end at steps 3, 6, 9.
        np.testing.assert_array_equal(gap.steps, [1, 2, 3, 4, 6, 8, 9])
        at_epoch_end = np.isin(gap.steps, [3, 6, 9])
        for values in gap.attribution.values():
            assert np.isfinite(values[at_epoch_end]).all() and np.isnan(values[~at_epoch_end]).all()
    else:
        np.testing.assert_array_equal(gap.steps, [1, 3, 6, 9])
