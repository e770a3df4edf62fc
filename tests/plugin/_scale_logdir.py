"""A logdir with several runs at real scale for the tab's end-to-end tests.

Runs: ``train`` and the HTML-named copy ``HOSTILE`` (``_plugin_logdir``);
``mobilenet_m0.99`` and ``mobilenet_m0.9``: ``keras.applications.MobileNetV2``
(52 BatchNormalization layers, the same paths in both) fitted briefly with
``BatchNormCallback`` at BN momentum 0.99 and 0.9; ``unwired``: a graph only,
seed 004's (update ops not wired, two sites ``a/bn`` and ``b/bn``); ``mirrored``: a
MirroredStrategy ``fit`` with per-replica statistics (``_mirrored_run.py``, layer ``bn``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from _plugin_logdir import write_logdir

MOBILENET_RUNS = {"mobilenet_m0.99": 0.99, "mobilenet_m0.9": 0.9}
MOBILENET_BN_LAYERS = 52
UNWIRED = "unwired"
MIRRORED = "mirrored"


def fit_mobilenet(root: str, run: str, momentum: float) -> None:
    import tensorflow as tf

    from tb_bn_plugin import BatchNormCallback

    keras = tf.keras
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(64, 32, 32, 3)).astype("float32")
    ys = rng.integers(0, 4, size=64)
    model.fit(
        xs,
        ys,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[BatchNormCallback(root, run_name=run, log_every_n_steps=2, gap_every_n_steps=4)],
    )


def write_scale_logdir(root: str) -> None:
    from _bn_graphs import two_seed004_layers

    from tb_bn_plugin.summary import write_graph

    write_logdir(root, corrupt_runs=False)
    for run, momentum in MOBILENET_RUNS.items():
        fit_mobilenet(root, run, momentum)
    write_graph(two_seed004_layers(wire_updates=False), os.path.join(root, UNWIRED))
    write_mirrored_run(root)


def write_mirrored_run(root: str) -> None:
    """Run ``mirrored`` (``_mirrored_run.py``, in a fresh process: it sets up 2 logical CPUs)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mirrored_run.py")
    done = subprocess.run(
        [sys.executable, script, root], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
