"""One worker of test_distribute.py's MultiWorkerMirroredStrategy test (TF_CONFIG set by it).

Usage: ``_multi_worker.py fit|loop LOG_DIR OUT_JSON``. Trains the same model
twice under one strategy, without and with logging to LOG_DIR
(``BatchNormCallback`` in ``model.fit``, or ``BatchNormLogger`` in a custom
loop), and writes whether all weights are identical, the final trainable
weights, the data and (loop) the collective ops per train step to OUT_JSON.

Two workarounds for Keras 3.15's ``fit`` under MultiWorkerMirroredStrategy,
which fails without them before the callback is involved: the data set yields
inputs only and the model adds its own loss (``_maybe_symbolic_build`` passes
an ``(x, y)`` batch to ``strategy.reduce``, which cannot reduce a nest across
workers), and ``train_step`` returns rank-1 logs (``reduce_per_replica``
reduces every log with ``strategy.reduce("MEAN", v, axis=0)``, which fails on
scalars).
"""

import json
import os
import sys
import warnings
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

keras = tf.keras

from tb_bn_plugin import BatchNormCallback, BatchNormLogger  # noqa: E402


def data() -> np.ndarray:
    """The global data set; rows 8:16 are shifted so the workers' shares differ."""
    rng = np.random.RandomState(0)
    x = (rng.randn(32, 3) * [1, 2, 3] + [1, 2, 3]).astype("float32")
    x[8:16] += 5
    return x


class SquaredOutputLoss(keras.layers.Layer):
    """Adds mean(output**2) as the model's loss."""

    def call(self, h):
        self.add_loss(tf.reduce_mean(tf.square(h)))
        return h


class RankOneLogsModel(keras.Model):
    def train_step(self, data):
        return {k: tf.reshape(v, [1]) for k, v in super().train_step(data).items()}


def build(strategy: tf.distribute.Strategy) -> keras.Model:
    keras.utils.set_random_seed(1)
    with strategy.scope():
        inp = keras.Input((3,))
        h = keras.layers.BatchNormalization(name="bn", momentum=0.8)(inp)
        model = RankOneLogsModel(inp, SquaredOutputLoss()(keras.layers.Dense(1)(h)))
        model.compile("sgd")
    return model


def fit(
    strategy: tf.distribute.Strategy, ds: tf.data.Dataset, log_dir: Optional[str]
) -> tuple[keras.Model, dict]:
    model = build(strategy)
    callbacks = [BatchNormCallback(log_dir, log_every_n_steps=1)] if log_dir else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(ds, epochs=2, verbose=0, callbacks=callbacks)
    return model, {}


def collective_ops(fn: tf.types.experimental.PolymorphicFunction, *args) -> int:
    """Collective ops in the graph ``fn`` traced for ``args``, nested functions included."""
    graph_def = fn.get_concrete_function(*args).graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return sum("Collective" in n.op for n in nodes)


def loop(
    strategy: tf.distribute.Strategy, ds: tf.data.Dataset, log_dir: Optional[str]
) -> tuple[keras.Model, dict]:
    """Two epochs of a custom loop (GradientTape in ``strategy.run``) logged by ``BatchNormLogger``.

    Also returns the number of collective ops in the traced train step.
    """
    model = build(strategy)
    optimizer = model.optimizer
    with strategy.scope():
        optimizer.build(model.trainable_variables)
    bn_log = BatchNormLogger(model, log_dir, optimizer=optimizer) if log_dir else None

    @tf.function
    def train_step(batch):
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x, training=True)))
            optimizer.apply_gradients(
                zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            )

        strategy.run(step, args=(batch,))

    for batch in strategy.experimental_distribute_dataset(ds.repeat(2)):
        train_step(batch)
        if bn_log is not None:
            bn_log.log()
    collectives = collective_ops(train_step, batch)
    if bn_log is not None:
        bn_log.close()
    return model, {"collective_ops": collectives}


def main(mode: str, log_dir: str, out: str) -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x = data()
    ds = tf.data.Dataset.from_tensor_slices(x).batch(16)
    train = {"fit": fit, "loop": loop}[mode]
    bare, bare_info = train(strategy, ds, None)
    plain = [w.numpy() for w in bare.weights]
    model, info = train(strategy, ds, log_dir)
    logged, trainable = (
        [w.numpy() for w in model.weights],
        [w.numpy() for w in model.trainable_weights],
    )
    with open(out, "w") as f:
        json.dump(
            {
                "identical": all(np.array_equal(a, b) for a, b in zip(plain, logged)),
                "x": x.tolist(),
                "trainable_weights": [w.tolist() for w in trainable],
                "bare": bare_info,
                "logged": info,
            },
            f,
        )


if __name__ == "__main__":
    main(*sys.argv[1:4])
