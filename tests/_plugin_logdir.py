"""A logdir written by the real ``BatchNormCallback``, shared by the plugin tests.

Runs:
  * ``train``: a short ``fit`` of a tiny conv net (16 logged steps, more than
    the 10 samples TensorBoard keeps of an unknown plugin's tensors), with the
    run graph the callback writes; layers ``block1_bn`` (6 channels),
    ``head_bn`` (no beta, momentum 0.9), ``frozen_bn`` (trainable=False);
  * ``HOSTILE``: a copy of ``train``'s events file under an HTML run name;
  * ``truncated``: ``train``'s events without the graph, cut mid-record two
    thirds in;
  * ``garbage``: an events file of random bytes.
"""

from __future__ import annotations

import os
import shutil
import struct

import numpy as np

HOSTILE = "<img src=x onerror=alert(1)>"
LAYERS = ("block1_bn", "head_bn", "frozen_bn")
LOGGED_STEPS = list(range(2, 33, 2))


def write_logdir(root: str, corrupt_runs: bool = True) -> None:
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2

    from tb_bn_plugin import BatchNormCallback

    keras = tf.keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization(name="block1_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.BatchNormalization(name="head_bn", center=False, momentum=0.9)(x)
    frozen = keras.layers.BatchNormalization(name="frozen_bn")
    frozen.trainable = False
    x = keras.layers.GlobalAveragePooling2D()(frozen(x))
    model = keras.Model(inp, keras.layers.Dense(2)(x))
    model.compile(keras.optimizers.SGD(0.05), "mse", metrics=["mae"])
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    ys = rng.normal(size=(64, 2)).astype("float32")
    model.fit(
        xs,
        ys,
        batch_size=4,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[BatchNormCallback(root, log_every_n_steps=2)],
    )
    train = os.path.join(root, "train")
    (events,) = os.listdir(train)
    os.makedirs(os.path.join(root, HOSTILE))
    shutil.copy(os.path.join(train, events), os.path.join(root, HOSTILE, events))
    if not corrupt_runs:
        return
    with open(os.path.join(train, events), "rb") as f:
        frames = tfrecords(f.read())
    kept = [r for r in frames if not event_pb2.Event.FromString(r[12:-4]).HasField("graph_def")]
    cut = len(kept) * 2 // 3
    os.makedirs(os.path.join(root, "truncated"))
    with open(os.path.join(root, "truncated", events), "wb") as f:
        f.write(b"".join(kept[:cut]) + kept[cut][: len(kept[cut]) // 2])
    os.makedirs(os.path.join(root, "garbage"))
    with open(os.path.join(root, "garbage", "events.out.tfevents.1.garbage"), "wb") as f:
        f.write(np.random.default_rng(1).bytes(4096))


def tfrecords(content: bytes) -> list[bytes]:
    """The TFRecord frames of an events file (8-byte length, 4-byte CRC, data, 4-byte CRC)."""
    frames, pos = [], 0
    while pos < len(content):
        (length,) = struct.unpack("<Q", content[pos : pos + 8])
        frames.append(content[pos : pos + 16 + length])
        pos += 16 + length
    return frames
